"""The command line: ``tilechord run``, ``tilechord up`` and ``tilechord ops``.

``group`` holds the click group and the entry point, one module per command holds that
command, ``outputs`` names and writes the files a run produces, and ``report`` prints
what a run shows.
"""

from __future__ import annotations

from .group import cli, main
from .outputs import expand_inputs, plan_outputs, safe_name, write_atomic
from .up import FLOWER_ENV

__all__ = ["FLOWER_ENV", "cli", "expand_inputs", "main", "plan_outputs", "safe_name", "write_atomic"]
