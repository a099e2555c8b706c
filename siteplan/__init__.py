"""The site file: plan, walls, racks, zones and gateways, read by engine, twin and live bridge."""
