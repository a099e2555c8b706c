"""Extract MiBeacon, Eddystone and iBeacon frames with their expected readings from the
Theengs decoder's tests (github.com/theengs/decoder, tests/BLE/test_ble.cpp, GPL-3.0).

    python tests/data/vectors/extract_theengs.py DECODER/tests/BLE/test_ble.cpp COMMIT \
        > tests/data/vectors/theengs.json

Only data is taken: each test row's service or manufacturer data and the JSON the
decoder's own test expects for it (rows pair up with the expected array by index).
"""

from __future__ import annotations

import json
import re
import sys

SERVICE_TABLES = (("test_uuid_name_svcdata", "expected_uuid_name_svcdata"), ("test_uuid", "expected_uuid"))
MFG_TABLES = (("test_mfgdata", "expected_mfg"),)


def _array(src: str, name: str) -> str:
    m = re.search(r"const char\* " + re.escape(name) + r"(\[\])+(\[\d+\])? = \{(.*?)\n\};", src, re.S)
    if m is None:
        raise SystemExit(f"{name} not found")
    return m.group(3)


def _strings(body: str) -> list[str]:
    return [s.encode().decode("unicode_escape") for s in re.findall(r'"((?:[^"\\]|\\.)*)"', body)]


def _rows(src: str, test: str, expected: str) -> list[tuple[list[str], dict[str, object]]]:
    rows = [_strings(r) for r in re.findall(r"\{([^{}]*)\}", _array(src, test))]
    exp = [json.loads(s) for s in _strings(_array(src, expected))]
    return list(zip(rows, exp, strict=True))


def extract(src: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for test, expected in SERVICE_TABLES:
        for row, exp in _rows(src, test, expected):
            uuid = next(
                (f.lower().removeprefix("0x") for f in row if f.lower().removeprefix("0x") in ("fe95", "feaa")), None
            )
            if uuid is None:
                continue
            out.append({"name": row[0], "service": uuid, "data": row[-1], "expect": exp})
    for test, expected in MFG_TABLES:
        for row, exp in _rows(src, test, expected):
            data = row[-1]
            if data.lower().startswith("4c000215"):
                out.append({"name": row[0], "manufacturer": data, "expect": exp})
    return out


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as fh:
        vectors = extract(fh.read())
    json.dump(
        {
            "source": "https://github.com/theengs/decoder tests/BLE/test_ble.cpp",
            "commit": sys.argv[2],
            "licence": "GPL-3.0 (test data only; no code taken)",
            "vectors": vectors,
        },
        sys.stdout,
        indent=1,
    )
