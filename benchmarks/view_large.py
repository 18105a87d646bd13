"""`ctxfold view` on large traces: what the page loads first, and how long it takes.

For each size, a synthetic finished run with that many sub-calls is written, served by the
viewer, and opened in headless Chromium (Debian's, driven by Playwright). Measured side by side
in one run: the trace file's size, the summary the page loads first (bytes, and as a share of
the file), the time until the run is on the page, the table rows put on the page (the page
shows sub-calls a hundred at a time), and the time to open one turn's and one sub-call's
details (loaded on demand).

    python benchmarks/view_large.py --sizes 100,1000,10000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
from playwright.sync_api import sync_playwright

from ctxfold.cli.view import start_viewer
from ctxfold.testing.traces import write_big_trace

_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    assert chromium, "install Debian's chromium"
    folder = Path(tempfile.mkdtemp(prefix="ctxfold-view-bench-"))
    print(
        "| sub-calls | trace MB | summary KB | summary / trace | first render s "
        "| rows on page | open a turn s | open a sub-call s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=_ARGS)
        for size in (int(s) for s in args.sizes.split(",")):
            path = folder / f"run-{size}.jsonl"
            write_big_trace(path, subcalls=size)
            viewer = start_viewer(path)
            summary = len(httpx.get(f"{viewer.url}api/trace").content)
            page = browser.new_page()
            started = time.perf_counter()
            page.goto(viewer.url)
            page.wait_for_selector("table.subcalls tr.clickable")
            first = time.perf_counter() - started
            rows = page.locator("table.subcalls tr.clickable").count()
            started = time.perf_counter()
            page.locator("details.turn summary").first.click()
            page.wait_for_selector("pre.code")
            turn = time.perf_counter() - started
            started = time.perf_counter()
            page.locator("table.subcalls tr.clickable").first.click()
            page.wait_for_selector("text=Prompt")
            call = time.perf_counter() - started
            page.close()
            viewer.stop()
            mb = path.stat().st_size / 1e6
            print(
                f"| {size:,} | {mb:.2f} | {summary / 1e3:.0f} | {summary / 1e6 / mb:.2f} "
                f"| {first:.2f} | {rows} | {turn:.3f} | {call:.3f} |"
            )
        browser.close()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
