"""Generate docs/scenario-reference.md from the scenario models, so the docs cannot drift.

    python -m tagtwin.docgen > docs/scenario-reference.md
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from twin.scenario import Scenario


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _models_in(tp: Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for a in typing.get_args(tp) for m in _models_in(a)]


def _default(field: FieldInfo) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        return "**required**"
    if isinstance(value, BaseModel):
        return "(section defaults)"
    text = repr(value)
    return f"`{text}`" if len(text) < 60 else "(see code)"


def _constraints(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "min length")):
            val = getattr(meta, attr, None)
            if val is not None:
                parts.append(f"{sym} {val}")
    return ", ".join(parts)


def render() -> str:
    lines = [
        "# Scenario reference",
        "",
        "Generated from `twin/scenario.py` by `python -m tagtwin.docgen`; do not edit by hand.",
        "A test fails when this file and the code disagree. See docs/scenarios.md for the guide.",
        "",
    ]
    seen: set[type[BaseModel]] = set()
    queue: list[tuple[str, type[BaseModel]]] = [("(top level)", Scenario)]
    while queue:
        path, model = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        doc = (model.__doc__ or "").strip().splitlines()
        lines += [f"## `{path}` ({model.__name__})", ""]
        if doc and not doc[0].startswith("Usage docs"):
            lines += [doc[0], ""]
        lines += ["| field | type | default | constraints | meaning |", "| --- | --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            key = field.alias or name
            meaning = field.description or ""
            if not meaning:  # a section: its class docstring says what it is
                docs = [(m.__doc__ or "").strip().splitlines() for m in _models_in(field.annotation)]
                meaning = "; ".join(d[0] for d in docs if d and not d[0].startswith("Usage docs"))
            lines.append(
                f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {_constraints(field)} | "
                f"{meaning.replace('|', '/')} |"
            )
            for sub in _models_in(field.annotation):
                is_list = typing.get_origin(field.annotation) is list
                sub_path = f"{'' if path == '(top level)' else path + '.'}{key}{'[]' if is_list else ''}"
                queue.append((sub_path, sub))
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
