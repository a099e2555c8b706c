"""TOML configuration files into pydantic models, with errors naming the file and field.

One implementation for scenarios, rule sets, gateway configs and key files: each has its
own error type (a subclass of :class:`ConfigFileError`) so callers can catch just theirs,
and every problem is one line ``<file>: <dotted.field[index]>: <what is wrong>``.
"""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class ConfigFileError(Exception):
    """A configuration file that cannot be used, with one line per problem."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """One line per pydantic error: the dotted field path, then the message."""
    problems = []
    for err in exc.errors():
        out = prefix
        for part in err["loc"]:
            if isinstance(part, str) and "[" in part:
                continue  # pydantic's internal union/validator tags
            out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
        problems.append(f"{out or '(top level)'}: {err['msg'].removeprefix('Value error, ')}")
    return problems


def read_text(path: Path | str, error: type[ConfigFileError] = ConfigFileError) -> str:
    """The file's text, or ``error`` saying why it cannot be read."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(path, [f"cannot read file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise error(path, ["not UTF-8 text"]) from None


def parse_toml(text: str, source: Path | str, error: type[ConfigFileError] = ConfigFileError) -> dict[str, Any]:
    """TOML text as a dict, or ``error`` with the line and column of the mistake."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(source, [f"not valid TOML: {exc}"]) from None


def load_toml(path: Path | str, error: type[ConfigFileError] = ConfigFileError) -> dict[str, Any]:
    """Read and parse a TOML file; errors name the file."""
    return parse_toml(read_text(path, error), path, error)


def validate_model(
    data: dict[str, Any], source: Path | str, model: type[Model], error: type[ConfigFileError] = ConfigFileError
) -> Model:
    """Parsed TOML validated into ``model``, or ``error`` naming ``source`` and each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(source, validation_problems(exc)) from None


def parse_model(
    text: str, source: Path | str, model: type[Model], error: type[ConfigFileError] = ConfigFileError
) -> Model:
    """TOML text validated into ``model``, or ``error`` naming ``source`` and each bad field."""
    return validate_model(parse_toml(text, source, error), source, model, error)


def check_private(path: Path | str, error: type[ConfigFileError] = ConfigFileError) -> None:
    """``error`` unless the file is private to its owner (no group or other permission bits):
    keys and credentials readable by other local users are as good as published."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise error(path, [f"cannot read file: {exc.strerror}"]) from None
    if mode & 0o077:
        raise error(path, [f"mode {mode:04o}: other users can read it; chmod 600 {path}"])
