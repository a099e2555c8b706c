"""Extract MiBeacon test frames and their expected readings from xiaomi-ble's tests.

Run once against a checkout of github.com/Bluetooth-Devices/xiaomi-ble (Apache-2.0):

    python tests/data/vectors/extract_xiaomi_ble.py XIAOMI_BLE/tests/test_parser.py COMMIT \
        > tests/data/vectors/xiaomi_ble.json

Only data is taken (frame bytes, address, bindkey, the values xiaomi-ble's own tests
expect); no code. Every `assert device.update(advertisement) == SensorUpdate(...)` on a
0xFE95 frame becomes one vector.
"""

from __future__ import annotations

import ast
import json
import sys


def _key_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "DeviceKey":
        for kw in node.keywords:
            if kw.arg == "key" and isinstance(kw.value, ast.Constant):
                return str(kw.value.value)
    return None


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _values(update: ast.Call) -> dict[str, object]:
    out: dict[str, object] = {}
    for field in ("entity_values", "binary_entity_values", "events"):
        d = _kw(update, field)
        if not isinstance(d, ast.Dict):
            continue
        for k, v in zip(d.keys, d.values, strict=True):
            name = _key_name(k) if k is not None else None
            if name is None or not isinstance(v, ast.Call):
                continue
            value = _kw(v, "event_type" if field == "events" else "native_value")
            try:
                out[name] = ast.literal_eval(value) if value is not None else None
            except ValueError:
                continue
    return out


def extract(source: str) -> list[dict[str, object]]:
    vectors: list[dict[str, object]] = []
    for fn in ast.parse(source).body:
        if not isinstance(fn, ast.FunctionDef) or not fn.name.startswith("test_"):
            continue
        data: bytes | None = None
        address = "00:00:00:00:00:00"
        bindkey: str | None = None
        for stmt in fn.body:
            if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                name = stmt.targets[0].id
                if name == "data_string":
                    try:
                        data = ast.literal_eval(stmt.value)
                    except ValueError:
                        data = None
                elif name == "bindkey" and isinstance(stmt.value, ast.Constant):
                    bindkey = str(stmt.value.value)
                elif name == "advertisement" and isinstance(stmt.value, ast.Call):
                    call = stmt.value
                    if isinstance(call.func, ast.Name) and call.func.id == "bytes_to_service_info":
                        addr = _kw(call, "address")
                        if isinstance(addr, ast.Constant):
                            address = str(addr.value)
                    else:
                        data = None  # another transport (scales, HHCC): not a 0xFE95 frame
            update = getattr(stmt, "test", None)
            left = update.left if isinstance(update, ast.Compare) else None
            via_adv = (
                isinstance(left, ast.Call)
                and len(left.args) == 1
                and isinstance(left.args[0], ast.Name)
                and left.args[0].id == "advertisement"
            )
            if (
                isinstance(stmt, ast.Assert)
                and isinstance(stmt.test, ast.Compare)
                and isinstance(stmt.test.comparators[0], ast.Call)
                and getattr(stmt.test.comparators[0].func, "id", "") == "SensorUpdate"
                and isinstance(data, bytes)
                and via_adv
            ):
                vectors.append(
                    {
                        "test": fn.name,
                        "frame": data.hex(),
                        "address": address,
                        "bindkey": bindkey,
                        "expect": _values(stmt.test.comparators[0]),
                    }
                )
    return vectors


if __name__ == "__main__":
    path, commit = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as fh:
        vecs = extract(fh.read())
    json.dump(
        {
            "source": "https://github.com/Bluetooth-Devices/xiaomi-ble tests/test_parser.py",
            "commit": commit,
            "licence": "Apache-2.0",
            "vectors": vecs,
        },
        sys.stdout,
        indent=1,
    )
