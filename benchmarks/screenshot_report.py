"""Renders a fidelity HTML report in headless Chromium and saves a screenshot, to check it the
way a reader sees it (issue 16, item 1). Needs Debian's `chromium` package
(`apt-get install chromium`, /usr/bin/chromium); tests/test_fidelity_report.py skips its
browser check where it is not installed.

    ./run python benchmarks/screenshot_report.py runs/demo/fidelity.html runs/demo/fidelity_screenshot.png
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The path of a Chromium executable on PATH, or None."""
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 2400,
               timeout_s: float = 120.0) -> Path:
    """Renders html_path (a local file) at width x height CSS pixels into png_path; raises
    RuntimeError with Chromium's last output line when no screenshot was written."""
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("no Chromium on PATH (install Debian's `chromium` package)")
    png_path = Path(png_path).resolve()
    png_path.unlink(missing_ok=True)
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--screenshot={png_path}", f"--window-size={width},{height}",
               Path(html_path).resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if not png_path.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}): {last}")
    return png_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", help="the fidelity report (.html)")
    parser.add_argument("png", help="where to write the screenshot")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args(argv)
    try:
        print(screenshot(args.html, args.png, args.width, args.height))
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"screenshot_report: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
