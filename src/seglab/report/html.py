"""What every page of the report shares: the templates, number cells, inline images,
durations."""

from __future__ import annotations

import base64
import io
import math
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader
from matplotlib.figure import Figure

REPORT_NAME = "report.html"


def render(template: str, context: dict[str, Any]) -> str:
    """templates/<template> filled with `context`."""
    env = Environment(loader=PackageLoader("seglab", "templates"), autoescape=True)
    env.filters["num"] = number
    return env.get_template(template).render(**context)


def number(value: Any, digits: int = 4) -> str:
    """A metric for a table cell: 4 decimals, "–" for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def png(fig: Figure) -> str:
    """The figure as a data URI (base64 PNG) for an <img> tag."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return data_uri(buffer.getvalue())


def data_uri(image: bytes) -> str:
    """PNG bytes as a data URI for an <img> tag."""
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")


def seconds_between(started: str | None, ended: str | None) -> int | None:
    """Seconds between two ISO times of run_info.json; None when one is missing."""
    try:
        return int(
            (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()
        )
    except (TypeError, ValueError):
        return None


def duration(started: str | None, ended: str | None) -> str | None:
    """A duration as "42 s", "3 min 05 s" or "2 h 04 min"."""
    seconds = seconds_between(started, ended)
    if seconds is None:
        return None
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
