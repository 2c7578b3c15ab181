"""Headless Chromium for the heatmap report: render a page to PNG and read its console log, so a
test (and `docs/render_heatmap_screenshot.py`) can assert that the page loads without errors."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

#: What a page's console output looks like in Chromium's stderr log.
_CONSOLE_MARKERS = ("CONSOLE", "Uncaught")


def chromium_binary() -> str | None:
    """The Chromium executable (``chromium``, then ``chromium-browser``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot_command(report: str | os.PathLike[str], png: str | os.PathLike[str],
                       window_size: tuple[int, int] = (1280, 900), binary: str | None = None) -> list[str]:
    """The headless Chromium command that renders ``report`` to ``png`` and logs the page's
    console to stderr (so a test can assert the page logs no error)."""
    return [binary or chromium_binary() or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
            "--enable-logging=stderr", "--v=0", f"--screenshot={Path(png).resolve()}",
            f"--window-size={window_size[0]},{window_size[1]}", Path(report).resolve().as_uri()]


def take_screenshot(report: str | os.PathLike[str], png: str | os.PathLike[str],
                    window_size: tuple[int, int] = (1280, 900), timeout: float = 120.0
                    ) -> subprocess.CompletedProcess[str]:
    """Run :func:`screenshot_command`; returns the finished process (its stderr holds the log)."""
    return subprocess.run(screenshot_command(report, png, window_size), capture_output=True,
                          text=True, timeout=timeout, check=False)


def console_errors(stderr: str) -> list[str]:
    """The lines of a Chromium log that report page console output or an uncaught exception."""
    return [line for line in stderr.splitlines() if any(m in line for m in _CONSOLE_MARKERS)]
