"""The HTML report in a real headless Chromium: it renders offline, without errors, and escapes input.

Chromium (Debian's ``chromium``; ``$CHROMIUM`` to point at another) is driven through its DevTools
protocol with ``websocket-client``, networking disabled (an unreachable proxy, no DNS, and DevTools'
offline emulation).  The tests are skipped, saying why, when no Chromium executable exists.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """The path of a Chromium/Chrome executable (``$CHROMIUM`` first), or None."""
    explicit = os.environ.get("CHROMIUM")
    if explicit and Path(explicit).exists():
        return explicit
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; events are collected in :attr:`events`.

    Use as a context manager; the browser process is ended (by its own PID) on exit.  With
    ``loopback=True`` the page may reach servers on 127.0.0.1 (the viewer's) and nothing else.
    """

    def __init__(self, executable: str, *, width: int = 1280, height: int = 1600, timeout: float = 60.0,
                 loopback: bool = False):
        self.executable = executable
        self.loopback = loopback
        self.width, self.height = width, height
        self.timeout = timeout
        self.events: list[dict] = []
        self._id = 0

    def __enter__(self) -> Browser:
        import websocket

        self._profile = tempfile.mkdtemp(prefix="dft-chromium-")
        args = [
            self.executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--metrics-recording-only", "--mute-audio",
            "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=" + ("127.0.0.1" if self.loopback else "<-loopback>"),
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self._profile}",
            f"--window-size={self.width},{self.height}", "about:blank",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.process.returncode} before DevTools started")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.loads(response.read())
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=self.timeout,
                                              suppress_origin=True)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Network.emulateNetworkConditions", offline=not self.loopback, latency=0, downloadThroughput=-1,
                  uploadThroughput=-1)
        self.send("Page.setLifecycleEventsEnabled", enabled=True)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self._profile, ignore_errors=True)

    # -- protocol ---------------------------------------------------------------------------------
    def send(self, method: str, **params) -> dict:
        """Send a command and return its result (events that arrive meanwhile are collected)."""
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == my_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self._record(message)

    def _record(self, message: dict) -> None:
        """Keep an event; dismiss a JavaScript dialog at once (it would block the page), keeping the record."""
        self.events.append(message)
        if message["method"] == "Page.javascriptDialogOpening":
            self._id += 1
            self.ws.send(json.dumps({"id": self._id, "method": "Page.handleJavaScriptDialog",
                                     "params": {"accept": True}}))

    def wait_for(self, method: str, *, timeout: float | None = None) -> dict:
        """Wait for an event (or return one already collected)."""
        for event in self.events:
            if event["method"] == method:
                return event
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if "method" in message:
                self._record(message)
                if message["method"] == method:
                    return message
        raise TimeoutError(f"no {method} event")

    def evaluate(self, expression: str, *, await_promise: bool = False):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error in {expression[:80]!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def poll(self, expression: str, *, timeout: float | None = None, interval: float = 0.2):
        """Evaluate ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} stayed falsy")
            time.sleep(interval)

    # -- helpers ----------------------------------------------------------------------------------
    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def click(self, x: float, y: float) -> None:
        """A real mouse click at viewport coordinates."""
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        self.send("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
        self.send("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left", clickCount=1)

    def screenshot(self, *, full_page: bool = False):
        """The page as an (H, W, 3) uint8 array."""
        from PIL import Image

        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", **params)["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def errors(self) -> list[str]:
        """JavaScript exceptions, console errors and error log entries seen so far."""
        out = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = params.get("args", [])
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in args))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append("log: " + params["entry"].get("text", ""))
        return out

    def dialogs(self) -> list[dict]:
        return [e["params"] for e in self.events if e["method"] == "Page.javascriptDialogOpening"]

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]


# -- the report under test -------------------------------------------------------------------------

XSS = "<script>alert(1)</script>"
S, T = 3, 5
ATTRIBUTION = '.dft-figure[data-kind="attribution"] .js-plotly-plot'
FEATURES, METHODS = ("edges", XSS), ("ablation:zero", "pearson")
LAYERS = ("conv_in", "down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1")


def _features() -> xr.Dataset:
    steps = np.arange(T)
    rng = np.random.default_rng(0)
    curve = 1 / (1 + np.exp(-(steps - 2.0)))
    return xr.Dataset(
        {"ssim": (("sample", "step"), curve + 0.05 * rng.standard_normal((S, T))),
         "band_relative_error": (("sample", "step", "band"),
                                 np.stack([1 - curve ** (k + 1) for k in range(3)], -1)[None].repeat(S, 0))},
        coords={"sample": np.arange(S), "step": steps, "band": ["low", "mid", "high"]})


def _attribution() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for feature in FEATURES:
        for method in METHODS:
            for layer in LAYERS:
                for start, stop in ((0, 2), (2, 5)):
                    effect = rng.normal()
                    rows.append(dict(feature=feature, layer=layer, step_start=start, step_stop=stop, method=method,
                                     effect=effect, ci_low=effect - 0.3, ci_high=effect + 0.3, p=0.01, p_adj=0.02,
                                     n=S, effect_std=effect, disruption=1.0, specificity=abs(effect)))
        for layer in ("mid_block", "up_blocks.1"):
            for step in range(T):
                rows.append(dict(feature=feature, layer=layer, step_start=step, step_stop=step + 1, method="probe",
                                 effect=rng.normal(), ci_low=-1.0, ci_high=1.0, p=np.nan, p_adj=np.nan, n=S,
                                 effect_std=0.0, disruption=np.nan, specificity=np.nan))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium/Chrome executable (Debian: apt-get install chromium; or set $CHROMIUM)")
    pytest.importorskip("websocket", reason="websocket-client (a dependency of nnsight) drives Chromium")
    return path


@pytest.fixture(scope="module")
def report(chromium, tmp_path_factory):
    import denoisefeat as dft
    from denoisefeat.viz import build_report

    folder = tmp_path_factory.mktemp("browser")
    pipe = dft.load_pipeline("tiny-sd")
    run = dft.trace(pipe, prompts=[f"{XSS} a red circle", "x & y <b>bold</b>", "a blue square"], seed=0, steps=T,
                    store=folder / "run.zarr", record={"mid_block": "channel_mean", "up_blocks.1": "spatial_energy"})
    rng = np.random.default_rng(2)
    images = {(layer, window, method): rng.uniform(size=(2, 3, 32, 32)) for layer in ("mid_block", "conv_in")
              for window in ((0, 2), (2, 5)) for method in METHODS}  # each method's runs have their own images
    path = build_report(run, folder / "report.html", title=f"Report {XSS}", features=_features(),
                        attribution=_attribution(), attribution_images=images)
    return path


@pytest.fixture(scope="module")
def page(chromium, report):
    with Browser(chromium, width=1280, height=1000) as browser:
        browser.open(report.as_uri())
        expected = browser.evaluate("document.querySelectorAll('figure.dft-figure').length")
        browser.poll(
            "Array.from(document.querySelectorAll('.js-plotly-plot'))"
            ".filter(function (g) { return g.querySelector('svg.main-svg, canvas'); }).length === " + str(expected))
        yield browser


def _rendered(page) -> int:
    return page.evaluate("Array.from(document.querySelectorAll('figure.dft-figure .js-plotly-plot'))"
                         ".filter(function (g) { return g.querySelector('svg.main-svg') && "
                         "g.querySelector('.plot-container'); }).length")


def test_every_figure_renders_offline_without_errors(page, report):
    figures = report.read_text().count('<figure class="dft-figure"')
    # 5 trajectory views, 2 profile figures, the attribution heatmap, 1 selectivity map, the activations;
    # the correlation of emergence steps too when denoisefeat.temporal computes the profiles
    import importlib.util

    assert figures in ((10, 11) if importlib.util.find_spec("denoisefeat.temporal") else (10,))
    assert page.evaluate("document.querySelectorAll('.js-plotly-plot').length") == figures
    assert _rendered(page) == figures
    assert page.errors() == []
    assert page.dialogs() == []
    remote = [u for u in page.requests() if not u.startswith(("file:", "data:"))]
    assert remote == []
    assert page.evaluate("typeof Plotly") == "object"


def test_screenshot_is_not_blank(page):
    page.evaluate("window.scrollTo(0, 0)")
    top = page.screenshot()
    page.evaluate("document.querySelector('figure.dft-figure').scrollIntoView()")
    time.sleep(0.3)
    figure = page.screenshot()
    for shot in (top, figure):
        assert shot.shape[0] > 500 and shot.shape[1] > 1000
        assert shot.std() > 10  # not a uniform page
        colours = np.unique(shot.reshape(-1, 3) // 16, axis=0)
        assert len(colours) > 20  # images, colour scales and text, not a blank or two-tone page
    assert (figure.reshape(-1, 3) != 255).any(axis=1).mean() > 0.05


def test_user_strings_show_as_text(page):
    assert page.evaluate("document.title") == f"Report {XSS}"
    assert page.evaluate("document.querySelector('h1').textContent") == f"Report {XSS}"
    body = page.evaluate("document.body.innerText")
    assert f"{XSS} a red circle" in body and "x & y <b>bold</b>" in body
    # no element came from the strings: no injected script and no <b> from the prompt
    assert page.evaluate("Array.from(document.scripts).filter(function (s) { "
                         "return s.textContent.trim().indexOf('alert(1)') === 0; }).length") == 0
    assert page.evaluate("document.querySelectorAll('td b').length") == 0
    # inside figures (SVG text): the prompt as a subplot title, the feature name in the dropdown
    svg_text = page.evaluate("Array.from(document.querySelectorAll('.js-plotly-plot text'))"
                             ".map(function (t) { return t.textContent; }).join('\\n')")
    assert f"sample 0 · {XSS} a red circle" in svg_text
    assert page.dialogs() == []


def _center(page, expression: str):
    return page.evaluate("(function () { var e = " + expression + "; if (!e) { return null; } "
                         "var r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")


def _visible(page) -> list[int]:
    return page.evaluate(f"document.querySelector('{ATTRIBUTION}').data.map(function (t, i) {{ "
                         "return t.type === 'heatmap' && t.visible === true ? i : -1; })"
                         ".filter(function (i) { return i >= 0; })")


def _choose(page, menu: int, label: str) -> None:
    page.click(*_center(page, f"document.querySelectorAll('{ATTRIBUTION} .updatemenu-header-group')[{menu}]"))
    time.sleep(0.3)
    button = _center(page, f"Array.from(document.querySelectorAll('{ATTRIBUTION} .updatemenu-dropdown-button'))"
                           f".filter(function (b) {{ return b.textContent === {json.dumps(label)}; }})[0]")
    assert button is not None, f"no dropdown entry {label!r}"
    page.click(*button)
    time.sleep(0.3)


def test_dropdowns_select_feature_and_method(page):
    page.evaluate(f"document.querySelector('{ATTRIBUTION}').scrollIntoView()")
    time.sleep(0.3)
    index = {(f, m): 2 * i + j for i, f in enumerate(FEATURES) for j, m in enumerate(METHODS)}
    assert _visible(page) == [index["edges", "ablation:zero"]]
    for menu, label, expected in [(0, XSS, (XSS, "ablation:zero")), (1, "pearson", (XSS, "pearson")),
                                  (0, "edges", ("edges", "pearson")), (1, "ablation:zero", ("edges", "ablation:zero"))]:
        _choose(page, menu, label)
        assert _visible(page) == [index[expected]], (label, expected)
    assert page.errors() == []


def test_clicking_a_cell_shows_its_images(page):
    page.evaluate(f"document.querySelector('{ATTRIBUTION}').scrollIntoView()")
    time.sleep(0.3)
    meta = page.evaluate(f"document.querySelector('{ATTRIBUTION}').layout.meta.denoisefeat")
    cell = page.evaluate(f"""(function () {{
        var gd = document.querySelector('{ATTRIBUTION}'), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        var r = gd.getBoundingClientRect();
        return [r.x + xa._offset + xa.d2p('[2, 5)'), r.y + ya._offset + ya.d2p('conv_in')]; }})()""")
    source = f"document.querySelector('{ATTRIBUTION}').data[{meta['image_trace']}].source"
    assert meta["by_method"] is True and page.evaluate(source) == meta["cells"]["mid_block|0|2|ablation:zero"]
    page.click(*cell)
    page.poll(f"{source} === {json.dumps(meta['cells']['conv_in|2|5|ablation:zero'])}", timeout=10)
    title = page.evaluate(f"document.querySelector('{ATTRIBUTION}').layout.annotations[{meta['image_title']}].text")
    assert title == "intervened: conv_in [2, 5)"
    _choose(page, 1, "pearson")  # the same cell of the other method shows that method's images
    page.click(*cell)
    page.poll(f"{source} === {json.dumps(meta['cells']['conv_in|2|5|pearson'])}", timeout=10)
    assert page.errors() == []


def test_step_slider_moves_to_the_first_step(page):
    grid = "document.querySelector('.dft-figure .js-plotly-plot')"
    page.evaluate(f"{grid}.scrollIntoView()")
    time.sleep(0.3)
    first_frame = page.evaluate(f"{grid}._transitionData._frames[0].data[0].source")
    assert page.evaluate(f"{grid}.data[0].source") != first_frame  # the last step is shown first
    rail = page.evaluate(f"(function () {{ var r = {grid}.querySelector('.slider-rail-rect').getBoundingClientRect(); "
                         "return [r.x, r.y + r.height / 2]; })()")
    page.click(rail[0] + 2, rail[1])
    page.poll(f"{grid}.data[0].source === {json.dumps(first_frame)}", timeout=10)
    assert page.evaluate(f"{grid}.layout.sliders[0].active") == 0
    assert page.errors() == []
