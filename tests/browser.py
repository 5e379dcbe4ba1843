"""Headless Chromium (Debian's `chromium` package) for tests of what a person looks at:
a page's DOM after its scripts ran, its console messages, and a PNG screenshot.

Tests that need it call `require_chromium()`: without the browser they skip on a
developer's machine and fail under CI (`CI` set), where `.ci/run` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]?\s*(.*)")


@dataclass
class Page:
    """What Chromium saw: the DOM after scripts ran, every console message (errors and
    uncaught exceptions included), and the screenshot file."""

    dom: str
    console: list[str] = field(default_factory=list)
    screenshot: Path | None = None


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def require_chromium() -> str:
    path = chromium()
    if path is None:
        message = "headless Chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="seglab-chromium-") as profile:
        command = [
            require_chromium(),
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def render(
    url: str,
    screenshot: Path | None = None,
    *,
    width: int = 1400,
    height: int = 1000,
    wait_ms: int = 5000,
    timeout: float = 120,
) -> Page:
    """Load `url` (http://... or file://...), let its scripts run for `wait_ms` of virtual
    time, and return its DOM and console; with `screenshot`, also write a PNG of the
    `width` x `height` viewport there (a second load of the page)."""
    common = [f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}"]
    result = _run([*common, "--dump-dom", url], timeout)
    console = [m.group(1) for line in result.stderr.splitlines() if (m := _CONSOLE.search(line))]
    page = Page(dom=result.stdout, console=console)
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = _run([*common, f"--screenshot={screenshot}", url], timeout)
        if not screenshot.is_file():
            raise AssertionError(f"Chromium wrote no screenshot of {url}:\n{shot.stderr[-2000:]}")
        page.screenshot = screenshot
    return page


def non_blank(png: Path, min_colours: int = 8) -> bool:
    """True when the PNG holds more than a handful of distinct colours (not an empty or
    single-colour page)."""
    from PIL import Image

    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    return colours is None or len(colours) >= min_colours
