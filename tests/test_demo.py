"""`denoisefeat demo --quick` end to end on the shipped toy model: store, report in a real browser, and a
printed summary whose every claim matches the stored attribution table."""

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from denoisefeat.analyses.table import rank, read_attribution, read_cell_images
from denoisefeat.cli import app
from denoisefeat.demo import DEMO_FEATURES, QUICK
from denoisefeat.models import TOY_WEIGHTS
from denoisefeat.step_features import load_features
from denoisefeat.store import open_run

pytestmark = pytest.mark.skipif(not (TOY_WEIGHTS / "model_index.json").is_file(),
                                reason="the toy model's weights are not in this checkout")

_NUMBER = r"([-+]?[\d.e+-]+|nan|inf)"
_DRIVER = re.compile(rf"^\s+(\w+)\s+(\w+): (\S+) at steps (\d+)-(\d+) changes it by {_NUMBER} "
                     rf"\[{_NUMBER}, {_NUMBER}\] \(std {_NUMBER}, specificity {_NUMBER}\), p_adj={_NUMBER}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return out, result.output


def test_store_holds_the_whole_study(demo):
    out, _ = demo
    run = open_run(out / "demo.zarr")
    assert run.dataset.sizes["sample"] == QUICK.samples and run.dataset.sizes["step"] == QUICK.steps
    assert {"down_blocks.0", "mid_block", "up_blocks.2"} <= set(run.layers())
    feats = load_features(out / "demo.zarr")
    assert {"edge_f1", "band_relative_error", "rapsd", "wavelet_energy"} <= set(feats.data_vars)
    table = read_attribution(out / "demo.zarr")
    assert set(table["table"]) == {"probe", "ablation"}
    ablation = table[table["table"] == "ablation"]
    assert set(ablation["feature"]) == set(DEMO_FEATURES.values())
    assert ablation.groupby(["layer"]).size().eq(len(DEMO_FEATURES) * QUICK.windows).all()
    assert {"shape", "color", "texture"} <= set(table.loc[table["table"] == "probe", "feature"])
    kept = read_cell_images(out / "demo.zarr", "ablation")  # the click-through images of the first 2 samples
    assert kept.n_samples == 2 and len(kept.cells) == len(ablation[["layer", "step_start"]].drop_duplicates())


def test_summary_claims_match_the_stored_table(demo):
    out, output = demo
    ablation = read_attribution(out / "demo.zarr", "ablation")
    claims = [m for m in map(_DRIVER.match, output.splitlines()) if m]
    # first the largest standardised effect of each family, then the most specific cell
    assert [m.group(1) for m in claims] == [*DEMO_FEATURES, *DEMO_FEATURES]
    for i, m in enumerate(claims):
        family, feature, layer, start, stop = m.group(1), m.group(2), m.group(3), int(m.group(4)), int(m.group(5))
        assert DEMO_FEATURES[family] == feature
        best = rank(ablation, feature=feature, by="effect" if i < len(DEMO_FEATURES) else "specificity", top=1).iloc[0]
        assert (best["layer"], best["step_start"], best["step_stop"]) == (layer, start, stop)
        # the summary prints 3 significant digits: half a unit of the third is up to 5e-3 relative
        for group, column, rel in ((6, "effect", 5e-3), (7, "ci_low", 2e-2), (8, "ci_high", 2e-2),
                                   (9, "effect_std", 5e-3), (10, "specificity", 5e-3), (11, "p_adj", 5e-2)):
            assert float(m.group(group)) == pytest.approx(best[column], rel=rel, abs=1e-12), column
    timing = re.findall(r"^\s+(\w+)\s+(\w+): steps (\d+)-(\d+) \(median \|std\. change\| ([\d.e+-]+) vs "
                        r"([\d.e+-]+|nan) in the other windows\)", output, re.M)
    assert [t[0] for t in timing] == list(DEMO_FEATURES)
    ratios = {}
    for family, feature, start, stop, value, others in timing:
        rows = ablation[ablation["feature"] == feature]
        per_window = rows["effect_std"].abs().groupby([rows["step_start"], rows["step_stop"]]).median()
        ratios[family] = per_window.iloc[-1] / per_window.iloc[0]
        assert per_window.idxmax() == (int(start), int(stop))
        # printed with 3 significant digits (up to 5e-3 relative)
        assert float(value) == pytest.approx(per_window.max(), rel=5e-3)
        assert float(others) == pytest.approx(per_window.drop((int(start), int(stop))).median(), rel=5e-3)
    fact = re.search(r"^Known fact, late steps make texture and edges: (yes|no) \(last-window over first-window "
                     r"median \|std\. change\|: (.*)\)$", output, re.M)
    printed = dict(item.rsplit(" ", 1) for item in fact.group(2).split(", "))
    assert list(printed) == list(DEMO_FEATURES)
    for family, value in printed.items():
        assert float(value) == pytest.approx(ratios[family], rel=5e-2)
    fine_late = min(ratios["texture"], ratios["edges"]) > max(ratios["shape"], ratios["color"])
    assert fact.group(1) == ("yes" if fine_late else "no")
    bands = re.findall(r"^\s+(low|mid|high)\s+emerges at step ([\d.]+), stabilises at step ([\d.]+)", output, re.M)
    assert [b[0] for b in bands] == ["low", "mid", "high"]
    assert all(np.isfinite(float(b[2])) for b in bands)
    assert str(out / "report.html") in output.replace("\n", "")


def test_report_renders_in_a_browser(demo):
    from test_report_browser import Browser, find_chromium  # the DevTools driver of the report tests

    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium/Chrome executable (Debian: apt-get install chromium; or set $CHROMIUM)")
    out, _ = demo
    html = out / "report.html"
    figures = html.read_text().count('<figure class="dft-figure"')
    assert figures >= 8
    with Browser(executable, width=1280, height=1000) as page:
        page.open(html.as_uri())
        page.poll("Array.from(document.querySelectorAll('figure.dft-figure .js-plotly-plot'))"
                  ".filter(function (g) { return g.querySelector('svg.main-svg'); }).length === " + str(figures))
        assert page.errors() == []
