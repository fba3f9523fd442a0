"""Templates: Jinja2 with autoescaping on for everything, so text from contacts, servers
and indexes (names, messages, reasons) is always escaped; only markup we make ourselves
(the QR code's SVG) is marked safe."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import jinja2
from starlette.responses import HTMLResponse

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(float(ts), datetime.UTC).isoformat()


def _hhmm(ts: float) -> str:
    return datetime.datetime.fromtimestamp(float(ts), datetime.UTC).strftime("%H:%M UTC")


def _seconds_from_now(ts: float) -> int:
    return max(0, round(float(ts) - time.time()))


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters.update(iso=_iso, hhmm=_hhmm, seconds_from_now=_seconds_from_now)
    return env


class Renderer:
    def __init__(self) -> None:
        self.env = environment()

    def page(self, name: str, status_code: int = 200, headers: dict[str, str] | None = None,
             **context: Any) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(name).render(**context),
                            status_code=status_code, headers=headers)
