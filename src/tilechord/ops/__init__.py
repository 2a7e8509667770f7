"""Operations: the registry, pipelines and their reach maths, and the built-in operations.

Importing this package registers the built-in operations (:mod:`.builtin`) and the
global ones (:mod:`.global_ops`).  Each operation's exact Pillow call is listed in
``docs/operations.md``.
"""

from __future__ import annotations

from . import builtin as _builtin  # noqa: F401  (registers the built-in operations)
from . import global_ops as _global_ops  # noqa: F401  (and the global ones)
from .operations import (
    Box,
    Histogram,
    Kind,
    Operation,
    OpSpec,
    Param,
    Pipeline,
    Registry,
    Step,
    add_histograms,
    operation,
    parse_pipeline,
    registry,
)

__all__ = [
    "Box",
    "Histogram",
    "Kind",
    "OpSpec",
    "Operation",
    "Param",
    "Pipeline",
    "Registry",
    "Step",
    "add_histograms",
    "operation",
    "parse_pipeline",
    "registry",
]
