"""The command line: ``tilechord run``, ``tilechord up`` and ``tilechord ops``."""

from __future__ import annotations

from .main import FLOWER_ENV, cli, expand_inputs, main, plan_outputs, safe_name, write_atomic

__all__ = ["FLOWER_ENV", "cli", "expand_inputs", "main", "plan_outputs", "safe_name", "write_atomic"]
