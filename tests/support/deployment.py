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


def substitute(arg: str, env: dict[str, str]) -> str:
    """``${VAR:-default}`` and ``${VAR}`` as compose expands them from *env*."""
    return re.sub(r"\$\{([A-Z_]+)(?::-([^}]*))?\}", lambda m: env.get(m[1]) or (m[2] or ""), arg)
