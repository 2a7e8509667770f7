"""The deployment files (docker-compose.yml, the Dockerfile), read as compose would read them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

#: The repository's root.
ROOT = Path(__file__).resolve().parent.parent.parent


def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed."""
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _one(match: re.Match[str], env: dict[str, str]) -> str:
    name, how, text = match[1], match[2], match[3] or ""
    value = env.get(name) or ""
    if how == ":?" and not value:  # required: compose stops with the message
        raise AssertionError(f"compose would stop: {name}: {text}")
    return value or (text if how == ":-" else "")


def substitute(arg: str, env: dict[str, str]) -> str:
    """``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` as compose expands them from *env*."""
    return re.sub(r"\$\{([A-Z_]+)(?:(:-|:\?)([^}]*))?\}", lambda m: _one(m, env), arg)
