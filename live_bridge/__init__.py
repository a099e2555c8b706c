"""Live bridge: real BLE scans (bleak) to signed gateway batches over MQTT.

Not built yet: see the live-bridge issue. The twin and the engine do not depend on it.
"""
