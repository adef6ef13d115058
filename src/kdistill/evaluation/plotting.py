"""What every figure shares: role colours, names that fit and never switch matplotlib into
maths mode, and the atomic PNG writer.

Figures are built with `matplotlib.figure.Figure` rather than pyplot: no global figure registry
to leak or close, and no display backend is ever touched (PNGs are rendered with Agg).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from kdistill.files import atomic_write_bytes

ROLE_COLOURS = {"teacher": "#3b6ea8", "student": "#e07b39", "baseline": "#8a8a8a"}
DPI = 110


def save_png(fig: Figure, path: Path) -> None:
    """The figure as a PNG, written atomically: a report never links a half-written image."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())


def tex_safe(text: str) -> str:
    """Two '$' in a model or class name would switch matplotlib into maths mode."""
    return str(text).replace("$", r"\$")


def short(text: str, width: int, middle: bool = False) -> str:
    """Run names differ in their tails (timestamp, `_2`), so cut those in the middle."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2 if middle else width - 1
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def who(model: dict[str, Any], sep: str = " ") -> str:
    """'name (role)' for plots, or just 'teacher' when the name already says the role."""
    name = tex_safe(short(model["name"], 40, middle=True))
    return name if model["name"] == model["role"] else f"{name}{sep}({model['role']})"


def colour(model: dict[str, Any]) -> str:
    """The model's role colour, the same in every figure and in the HTML report."""
    return ROLE_COLOURS.get(model.get("role", "student"), ROLE_COLOURS["student"])
