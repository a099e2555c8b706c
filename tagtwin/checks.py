"""`tagtwin check` results as rows, and as JUnit XML so any CI system shows each bound
as a test case (failed when the metric regressed, skipped when a file has no bounds)."""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree as ET


@dataclass(frozen=True)
class BoundRow:
    file: str
    scenario: str
    metric: str
    bound: str
    min: float | None
    max: float | None
    value: float | None
    result: str  # "ok", "REGRESSED", or "skipped: ..."
    seconds: float

    @property
    def value_text(self) -> str:
        if self.metric == "-":
            return "-"
        return "missing" if self.value is None else f"{self.value:g}"


def junit_xml(rows: list[BoundRow]) -> str:
    """One <testsuite> per scenario file, one <testcase> per bound."""
    suites = ET.Element("testsuites", name="tagtwin check")
    by_file: dict[str, list[BoundRow]] = {}
    for row in rows:
        by_file.setdefault(row.file, []).append(row)
    for file, file_rows in by_file.items():
        failures = sum(r.result == "REGRESSED" for r in file_rows)
        skipped = sum(r.result.startswith("skipped") for r in file_rows)
        suite = ET.SubElement(
            suites, "testsuite", name=file, tests=str(len(file_rows)), failures=str(failures),
            skipped=str(skipped), time=f"{sum(r.seconds for r in file_rows):.3f}",
        )
        for r in file_rows:
            case = ET.SubElement(suite, "testcase", classname=r.scenario, name=r.metric, time=f"{r.seconds:.3f}")
            if r.result == "REGRESSED":
                failure = ET.SubElement(case, "failure", message=f"{r.metric} = {r.value_text}, expected {r.bound}")
                failure.text = f"{r.file}: {r.metric} = {r.value_text}, outside {r.bound}"
            elif r.result.startswith("skipped"):
                ET.SubElement(case, "skipped", message=r.result)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
