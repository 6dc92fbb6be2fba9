"""Where the configuration comes from, read without validating it: the file's
path, its TOML, and the ``MAILBOT_<SECTION>__<KEY>`` environment overrides.

Standard library only: ``mailbot.config`` validates what this reads, and the
pipe's store-only route (``mailbot.intake``), which must start in a few
milliseconds, reads the few keys it needs from here without pydantic.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mailbot.errors import ConfigError

ENV_PREFIX = "MAILBOT_"
ENV_NESTING = "__"

# The defaults both readers need; ``mailbot.config`` declares every other one.
DEFAULT_DATABASE_URL = "sqlite:///var/mailbot.db"
DEFAULT_BUSY_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 10 * 1024 * 1024


def config_path(explicit: str | None) -> Path | None:
    """The file to read: --config, else $MAILBOT_CONFIG, else ./mailbot.toml."""
    if explicit:
        return Path(explicit)
    if from_env := os.environ.get("MAILBOT_CONFIG"):
        return Path(from_env)
    local = Path("mailbot.toml")
    return local if local.is_file() else None


def read_toml(path: Path) -> dict[str, Any]:
    """The file's values, or ConfigError naming the file and what is wrong."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def raw_section(
    values: Mapping[str, Any], section: str, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """One section's keys: the file's, overridden by the environment as the full
    settings are (``MAILBOT_<SECTION>`` as a JSON object, then
    ``MAILBOT_<SECTION>__<KEY>``, names in any case). Values from the
    environment stay strings, to be converted by whoever reads them."""
    environ = os.environ if environ is None else environ
    found = values.get(section, {})
    merged: dict[str, Any] = dict(found) if isinstance(found, dict) else {}
    whole = ENV_PREFIX + section.upper()
    prefix = whole + ENV_NESTING
    for name, value in environ.items():
        upper = name.upper()
        if upper == whole:
            merged.update(_json_object(name, value))
    for name, value in environ.items():
        upper = name.upper()
        if upper.startswith(prefix) and ENV_NESTING not in upper[len(prefix) :]:
            merged[upper[len(prefix) :].lower()] = value
    return merged


def _json_object(name: str, value: str) -> dict[str, Any]:
    import json  # rarely used: not paid for at start-up

    try:
        parsed = json.loads(value)
    except ValueError:
        raise ConfigError(f"{name}: not a JSON object") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{name}: not a JSON object")
    return parsed
