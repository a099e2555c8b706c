"""`tagtwin audit`: list an audit log, or re-derive one event from its own evidence
(engine/audit.py does the work; this prints it). Returns the exit code."""

from __future__ import annotations

import sys
from pathlib import Path

from engine.audit import AuditError, find_event, read_audit, rederive


def audit_command(event_id: str | None, log: Path) -> int:
    """0: listed, or reproduced; 1: the evidence does not re-derive the event; 2: the log or
    the id is unusable (one line naming the file and line)."""
    try:
        if event_id is None:
            for rec in read_audit(log):
                ev = rec["event"]
                print(f"{rec['id']}  {rec['kind']:<8} {ev['rule']:<22} t={ev['t']:<10g} {ev['tag']}")
            return 0
        rec = find_event(log, event_id)
        result = rederive(rec)
    except AuditError as exc:
        print(" ".join(str(exc).split()), file=sys.stderr)
        return 2
    ev, evidence = rec["event"], rec["evidence"]
    print(f"{rec['id']}: {rec['kind']} ({ev['rule']}) of {ev['tag']} at t={ev['t']:g}; rule set "
          f"{rec['ruleset_version']}, model {rec['model'].get('settings_sha256')}; evidence: "
          f"{len(evidence['sightings']['t'])} sightings, {len(evidence['fixes']['t'])} fixes")
    if not result.reproduced:
        print(f"NOT reproduced: {result.note}", file=sys.stderr)
        return 1
    print(f"reproduced: {result.note}")
    return 0
