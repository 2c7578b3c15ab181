"""Render a skill-heatmap report (or a folder/file of heatmap records) to a PNG with headless Chromium.

Made for the screenshot in README.md, from a real run's ``<output_dir>/heatmaps/``:

    python docs/render_heatmap_screenshot.py outputs/run/heatmaps/step-1-rank0.jsonl \\
        docs/skill_heatmap.png --open-prompts 1

An ``.html`` report is rendered as it is; records (a ``step-*.jsonl`` file or a ``heatmaps/``
folder) are first written to a report in a temporary folder (or to ``--report``). The command is
the one the browser test runs (``opid_trl.reporting.browser.screenshot_command``), and the script fails if
the page logs a console error, so no screenshot is taken of a page that is broken in a browser.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone, installed or not

from opid_trl.reporting import heatmap
from tests import browser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path,
                        help="an .html report, a step-*.jsonl file or a heatmaps/ folder")
    parser.add_argument("png", type=Path, help="where to write the screenshot")
    parser.add_argument("--window-size", default="1280,900", help="WIDTH,HEIGHT of the browser window")
    parser.add_argument("--rows", type=int, default=None, help="only the first ROWS records (records only)")
    parser.add_argument("--title", default="Token heatmaps of a skill", help="report title (records only)")
    parser.add_argument("--open-prompts", type=int, default=0,
                        help="unfold the injected prompt of the first N rows (records only)")
    parser.add_argument("--report", type=Path, default=None,
                        help="keep the rendered report here (records only)")
    return parser.parse_args(argv)


def report_for(source: Path, target: Path, rows: int | None, title: str, open_prompts: int = 0) -> Path:
    """The report to load: ``source`` itself, or one rendered from its records to ``target``."""
    if source.suffix == ".html":
        return source
    records = heatmap.load_records(source)
    if not records:
        raise SystemExit(f"no heatmap records in {source}")
    return heatmap.write_report(records[:rows] if rows else records, target, title=title,
                                open_prompts=open_prompts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    width, height = (int(v) for v in args.window_size.split(","))
    args.png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        target = args.report or Path(scratch) / "report.html"
        report = report_for(args.source, target, args.rows, args.title, args.open_prompts)
        return screenshot(report, args.png, (width, height))


def screenshot(report: Path, png: Path, window_size: tuple[int, int]) -> int:
    """Take the screenshot; 1 (with Chromium's log) if it failed or the page logged an error."""
    png.unlink(missing_ok=True)  # a stale screenshot must not pass for a new one
    done = browser.take_screenshot(report, png, window_size)
    errors = browser.console_errors(done.stderr)
    if done.returncode != 0 or not png.exists() or errors:
        print(done.stderr[-4000:], file=sys.stderr)
        print(f"screenshot failed (exit {done.returncode}, {len(errors)} console errors)", file=sys.stderr)
        return 1
    print(f"{png} ({png.stat().st_size // 1024} KB) from {report.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
