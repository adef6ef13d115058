"""kdistill: online knowledge distillation of text classifiers.

The public Python API, loaded on first use so that `import kdistill` and `kdistill --help` stay
instant (no torch or transformers until a name below is touched):

    from kdistill import DistillConfig, distill          # the distill command: a run folder
    from kdistill import load_teacher, teacher_logits, kd_loss        # its components
    from kdistill import DistillationTrainer, DistillationArguments   # a transformers.Trainer

See docs/api.md.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_LAZY = {
    "DistillConfig": "kdistill.config",
    "KdistillError": "kdistill.errors",
    "load_teacher": "kdistill.api",
    "teacher_logits": "kdistill.api",
    "kd_loss": "kdistill.api",
    "KDLoss": "kdistill.api",
    "Teacher": "kdistill.api",
    "DistillationTrainer": "kdistill.trainer",
    "DistillationArguments": "kdistill.trainer",
}

__all__ = ["__version__", "distill", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        if name != "KdistillError":
            _check_transformers()
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'kdistill' has no attribute {name!r}")


def _check_transformers() -> None:
    """The API's names need transformers >= the floor in kdistill.requirements: an older one
    fails here, in one line, rather than deep in a model's forward pass."""
    from kdistill.requirements import check_transformers

    check_transformers()


def __dir__() -> list[str]:
    return sorted(__all__)


class _Package(types.ModuleType):
    """`kdistill.distill` names both the submodule with the command's code and the function that
    runs it. Python sets a package's attribute to a submodule whenever that submodule is first
    imported (the CLI does), so a plain attribute would be the function or the module depending
    on what ran before. The property makes it the function, always; the module stays
    `importlib.import_module("kdistill.distill")` (and `from kdistill.distill import ...`)."""

    @property
    def distill(self) -> Any:
        _check_transformers()
        from kdistill.distill import distill

        return distill

    @distill.setter
    def distill(self, module: Any) -> None:
        """The import system's `setattr(kdistill, "distill", <module>)`: nothing to store."""


sys.modules[__name__].__class__ = _Package
