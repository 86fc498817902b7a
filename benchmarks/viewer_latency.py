"""Viewer latency in a real browser: time to the first frame and to a step change (issue 21).

    OMP_NUM_THREADS=2 python benchmarks/viewer_latency.py [--samples 1000] [--steps 20] [--size 64]   # prints JSON

Writes a store of photo-like images directly (``tests/photo_store.py``, 8 samples per chunk, no
model), opens it with :func:`denoisefeat.viewer.create_app` (``open_s``: the store's open and
verify), serves it on 127.0.0.1 and drives headless Chromium (``tests/test_report_browser.Browser``):
``first_frame_s`` is from navigation to the first x̂0 frame decoded on the page; ``step_change_ms``
the median (and all) times from a click on the step slider to the new frame decoded, over
``--changes`` clicks at different steps.  Targets: first frame ≤ 2 s, step change ≤ 300 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # photo_store, the Chromium driver

from _common import emit, machine, peak_rss_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--changes", type=int, default=10)
    args = parser.parse_args()

    from photo_store import write_photo_store
    from test_report_browser import Browser, find_chromium
    from werkzeug.serving import make_server

    from denoisefeat.viewer import create_app

    chromium = find_chromium()
    if chromium is None:
        sys.exit("no Chromium/Chrome executable (apt-get install chromium, or set $CHROMIUM)")
    tmp = Path(tempfile.mkdtemp(prefix="dft-viewer-bench-"))
    start = time.perf_counter()
    path = write_photo_store(tmp / "run.zarr", samples=args.samples, steps=args.steps, size=args.size,
                             chunk_samples=8)
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    app = create_app(path)
    open_s = time.perf_counter() - start
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    frame = "document.querySelector('#frame')"
    decoded = f"({frame} && {frame}.complete && {frame}.naturalWidth > 0 && {frame}.src.indexOf('data:') === 0)"
    try:
        with Browser(chromium, width=1280, height=1200, loopback=True) as browser:
            browser.open("about:blank")
            start = time.perf_counter()
            browser.send("Page.navigate", url=f"http://127.0.0.1:{server.server_port}/")
            browser.poll(decoded, timeout=120, interval=0.01)
            first_frame_s = time.perf_counter() - start
            browser.poll("!!document.querySelector('#step .dash-slider-track, #step .rc-slider-rail')", timeout=60)
            rail = browser.evaluate("(function () { var r = document.querySelector("
                                    "'#step .dash-slider-track, #step .rc-slider-rail').getBoundingClientRect(); "
                                    "return [r.x, r.y + r.height / 2, r.width]; })()")
            times = []
            for k in range(args.changes):
                before = browser.evaluate(f"{frame}.src")
                fraction = (k % 2) * 0.9 + 0.05 * (k // 2 % 2)  # alternate ends so that every click changes the step
                start = time.perf_counter()
                browser.click(rail[0] + 1 + fraction * (rail[2] - 2), rail[1])
                browser.poll(f"{frame}.src !== {before!r} && {decoded}", timeout=30, interval=0.005)
                times.append(time.perf_counter() - start)
            errors = browser.errors()
    finally:
        server.shutdown()
        thread.join(timeout=10)
    emit({
        "benchmark": "viewer_latency",
        "samples": args.samples, "steps": args.steps, "image_size": args.size,
        "write_s": round(write_s, 2),
        "open_s": round(open_s, 3),
        "first_frame_s": round(first_frame_s, 3),
        "time_to_first_frame_s": round(open_s + first_frame_s, 3),
        "step_change_ms": round(1000 * statistics.median(times), 1),
        "step_change_all_ms": [round(1000 * t, 1) for t in times],
        "js_errors": errors,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "load_average": [round(v, 1) for v in os.getloadavg()],  # other work on the machine meanwhile
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
