"""Re-export: the TOML-into-pydantic helper lives in siteplan/config_file.py (the site
file needs it and siteplan sits below engine)."""

from siteplan.config_file import ConfigFileError, load_toml, parse_toml, read_text, validation_problems

__all__ = ["ConfigFileError", "load_toml", "parse_toml", "read_text", "validation_problems"]
