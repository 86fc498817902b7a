"""`denoisefeat view` in a real headless Chromium: the step slider, an attribution cell, the pixels shown, no errors.

One viewer (a Dash app on 127.0.0.1, a free port) and one browser per module.  The page's frames are
compared with an independent reference: the 2 × 2 block means of the stored x̂0, rounded to 8 bits.
The test also makes the screenshot ``docs/viewer.png`` that the README shows: it writes it when the
file is missing or ``DENOISEFEAT_UPDATE_DOCS=1`` is set (so that a test run leaves the checkout clean;
the page shows the temporary store's path).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from photo_store import write_photo_store
from skimage.transform import downscale_local_mean
from test_report_browser import Browser, _attribution, find_chromium
from typer.testing import CliRunner

import denoisefeat as dft
from denoisefeat.viz.frames import FramePolicy, decode_image_uri

pytest.importorskip("dash", reason="the viewer needs the 'viewer' extra (dash)")

S, T, SIZE = 3, 6, 64
DOCS = Path(__file__).resolve().parent.parent / "docs"


KEPT = 2  # samples whose clean and ablated final images the scan table keeps


def _cell_images(table):
    """Images of the table's ablation cells as a scan with keep_images=KEPT would keep them (photo-like, distinct)."""
    from photo_store import photo

    from denoisefeat.analyses.table import CellImages

    rng = np.random.default_rng(5)
    rows = table[table["method"] == "ablation:zero"].drop_duplicates(["layer", "step_start", "step_stop"])
    cells = [(r.layer, r.step_start, r.step_stop, r.method) for r in rows.itertuples()]
    clean = np.stack([photo(rng, SIZE) for _ in range(KEPT)])
    edited = np.stack([np.stack([photo(rng, SIZE) for _ in range(KEPT)]) for _ in cells])
    return CellImages(cells=cells, clean=clean, edited=edited)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from denoisefeat.analyses.table import write_attribution

    path = write_photo_store(tmp_path_factory.mktemp("viewer") / "run.zarr", samples=S, steps=T, size=SIZE)
    dft.features(dft.open_run(path), metrics=["edge_density", "colorfulness"])
    table = _attribution()
    table = table[table["method"] != "probe"].copy()
    table.attrs["images"] = _cell_images(table)
    write_attribution(path, table, name="scan")
    return path


@pytest.fixture(scope="module")
def page(store):
    from werkzeug.serving import make_server

    from denoisefeat.viewer import create_app

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium/Chrome executable (Debian: apt-get install chromium; or set $CHROMIUM)")
    pytest.importorskip("websocket", reason="websocket-client (a dependency of nnsight) drives Chromium")
    app = create_app(store, frames=FramePolicy(max_px=SIZE // 2, lossless_px=SIZE))
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with Browser(chromium, width=1280, height=1500, loopback=True) as browser:  # the viewer's own server
            browser.url = f"http://127.0.0.1:{server.server_port}/"
            browser.open(browser.url)
            browser.poll("!!(document.querySelector('#frame') && document.querySelector('#frame').src"
                         ".indexOf('data:image/png') === 0 && document.querySelector('#attribution .main-svg') && "
                         "document.querySelector('#step .dash-slider-track, #step .rc-slider-rail'))",
                         timeout=60)
            yield browser
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _reference(store, sample: int, step: int) -> np.ndarray:
    images = dft.open_run(store)["images"].isel(sample=sample, step=step).values.astype(np.float64)
    mean = downscale_local_mean(images, (1, 2, 2))
    return np.round(np.clip(np.moveaxis(mean, 0, -1), 0, 1) * 255).astype(np.uint8)


def _shown(page, selector: str) -> np.ndarray:
    assert page.evaluate(f"document.querySelector('{selector}').naturalWidth") == SIZE // 2  # decoded by the page
    return decode_image_uri(page.evaluate(f"document.querySelector('{selector}').src"))


def _assert_same(shown: np.ndarray, expected: np.ndarray) -> None:
    diff = np.abs(shown.astype(int) - expected)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float32 vs float64 block means at rounding ties


def test_first_frame_is_the_last_step_of_sample_0(page, store):
    _assert_same(_shown(page, "#frame"), _reference(store, 0, T - 1))
    assert "step 5" in page.evaluate("document.querySelector('#frame-caption').textContent")
    assert page.errors() == []


def test_step_slider_moves_the_frame(page, store):
    before = page.evaluate("document.querySelector('#frame').src")
    rail = page.evaluate("(function () { var r = document.querySelector("
                         "'#step .dash-slider-track, #step .rc-slider-rail').getBoundingClientRect(); "
                         "return [r.x, r.y + r.height / 2]; })()")
    page.click(rail[0] + 2, rail[1])  # the left end of the slider's track: step 0
    page.poll(f"document.querySelector('#frame').src !== {before!r}", timeout=20)
    page.poll("document.querySelector('#frame-caption').textContent.indexOf('step 0') >= 0", timeout=20)
    _assert_same(_shown(page, "#frame"), _reference(store, 0, 0))
    assert page.errors() == []


def test_band_picker_shows_the_band_pass_image(page, store):
    from skimage.color import rgb2gray

    from denoisefeat.frequency import band_pass

    radio = page.evaluate("(function () { var e = Array.from(document.querySelectorAll('#band input'))"
                          ".filter(function (i) { return i.value === 'high'; })[0].getBoundingClientRect(); "
                          "return [e.x + e.width / 2, e.y + e.height / 2]; })()")
    page.click(*radio)
    page.poll("document.querySelector('#frame-caption').textContent.indexOf('high band') === 0", timeout=20)
    step = int(page.evaluate("document.querySelector('#frame-caption').textContent").split("step ")[1].split()[0])
    rgb = dft.open_run(store)["images"].isel(sample=0, step=step).values.astype(np.float64)
    high = band_pass(rgb2gray(np.moveaxis(rgb, 0, -1)))[2]  # documented: 0 at mid-grey, ±max|band| at the ends
    grey = downscale_local_mean(0.5 + 0.5 * high / np.abs(high).max(), (2, 2))
    shown = _shown(page, "#frame")
    assert (shown[..., 0] == shown[..., 1]).all()
    assert np.abs(shown[..., 0].astype(int) - np.round(np.clip(grey, 0, 1) * 255)).max() <= 1
    image = ("Array.from(document.querySelectorAll('#band input'))"
             ".filter(function (i) { return i.value === 'image'; })[0]")
    page.click(*page.evaluate(f"(function () {{ var r = {image}.getBoundingClientRect(); "
                              "return [r.x + r.width / 2, r.y + r.height / 2]; })()"))
    page.poll("document.querySelector('#frame-caption').textContent.indexOf('x̂0') === 0", timeout=20)
    assert page.errors() == []


def _block_mean(image) -> np.ndarray:
    """The documented downscaling of a (3, H, W) image to half size: 2 × 2 block means, rounded to 8 bits."""
    mean = downscale_local_mean(np.asarray(image, dtype=np.float64), (1, 2, 2))
    return np.round(np.clip(np.moveaxis(mean, 0, -1), 0, 1) * 255).astype(np.uint8)


def test_clicking_an_attribution_cell_shows_its_clean_and_ablated_images(page, store):
    from denoisefeat.analyses.table import read_cell_images

    page.evaluate("document.querySelector('#attribution').scrollIntoView()")
    time.sleep(0.3)
    cell = page.evaluate("""(function () {
        var gd = document.querySelector('#attribution .js-plotly-plot'), xa = gd._fullLayout.xaxis,
            ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
        return [r.x + xa._offset + xa.d2p('[2, 5)'), r.y + ya._offset + ya.d2p('mid_block')]; })()""")
    page.click(*cell)
    page.poll("document.querySelector('#cell-edited') && document.querySelector('#cell-edited').src"
              ".indexOf('data:image/png') === 0", timeout=20)
    assert page.evaluate("document.querySelector('#cell-edited-caption').textContent") == \
        "final image, edited in mid_block [2, 5)"
    assert "ablation:zero · mid_block [2, 5) · sample 0" in page.evaluate(
        "document.querySelector('#cell-caption').textContent")
    kept = read_cell_images(store, "scan")
    index = kept.index("mid_block", 2, 5, "ablation:zero")
    _assert_same(_shown(page, "#cell-clean"), _block_mean(kept.clean[0]))
    _assert_same(_shown(page, "#cell-edited"), _block_mean(kept.edited[index, 0]))
    assert not page.evaluate("document.querySelector('#cell-corrupted').getAttribute('src')")  # an ablation: none
    assert page.errors() == []


def test_a_cell_without_kept_images_says_so(store, tmp_path):
    import shutil

    from denoisefeat.analyses.table import read_attribution, write_attribution
    from denoisefeat.viewer import VIEWER_FRAMES
    from denoisefeat.viewer.app import _cell, _Source

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    plain = read_attribution(copy, "scan")
    write_attribution(copy, plain[plain["method"] == "ablation:zero"].assign(method="ablation:mean"), name="plain")
    source = _Source(dft.open_run(copy), VIEWER_FRAMES)
    table = source.attribution()
    none = _cell(source, table, "edges", "ablation:mean", "mid_block", 2, 5, 0)
    assert none[0].startswith("Table 'plain' holds no images of its edited runs: rerun the scan with keep_images")
    pearson = _cell(source, table, "edges", "pearson", "mid_block", 2, 5, 0)
    assert pearson[0] == "Table 'scan' keeps no images of mid_block [2, 5) by pearson." and pearson[1] is None
    later = _cell(source, table, "edges", "ablation:zero", "mid_block", 2, 5, KEPT)
    assert later[0].startswith(f"Table 'scan' keeps the images of samples 0–{KEPT - 1} only")
    assert source.cell_images("nope") is None
    shown = _cell(source, table, "edges", "ablation:zero", "conv_in", 0, 2, 1)
    assert shown[1].startswith("data:image/png") and shown[5] is None


def test_only_the_viewer_is_contacted_and_screenshot(page, tmp_path):
    page.evaluate("window.scrollTo(0, 0)")
    time.sleep(0.3)
    shot = page.screenshot()
    assert shot.std() > 10 and len(np.unique(shot.reshape(-1, 3) // 16, axis=0)) > 20
    remote = [u for u in page.requests() if not u.startswith((page.url, "data:"))]
    assert remote == []
    from PIL import Image

    Image.fromarray(shot).save(tmp_path / "viewer.png", optimize=True)
    if os.environ.get("DENOISEFEAT_UPDATE_DOCS") == "1" or not (DOCS / "viewer.png").exists():
        (DOCS / "viewer.png").write_bytes((tmp_path / "viewer.png").read_bytes())
    assert page.errors() == []


def test_view_refuses_what_the_cli_refuses(store, tmp_path):
    import shutil

    from denoisefeat.cli import app

    runner = CliRunner()
    missing = tmp_path / "nope.zarr"
    for path in (missing, tmp_path):
        view, info = runner.invoke(app, ["view", str(path)]), runner.invoke(app, ["info", str(path)])
        assert view.exit_code == info.exit_code == 2
        assert view.output == info.output and "error:" in view.output
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(store, damaged)
    chunk = next(p for p in sorted((damaged / "images").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    view, info = runner.invoke(app, ["view", str(damaged)]), runner.invoke(app, ["info", str(damaged)])
    assert view.exit_code == info.exit_code == 2 and view.output == info.output and "damaged" in view.output
