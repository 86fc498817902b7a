import numpy as np
import pandas as pd
import pytest

from denoisefeat.analyses import table
from denoisefeat.store import RunStore, StoreError


def make_frame():
    rows = []
    rng = np.random.default_rng(0)
    for feature in ("edge_density", "delta_e2000"):
        for layer in ("conv_in", "down_blocks.0", "mid_block", "up_blocks.0"):
            for start, stop in ((0, 5), (5, 10)):
                effect = float(rng.normal(scale=0.1))
                rows.append(dict(feature=feature, layer=layer, step_start=start, step_stop=stop,
                                 method="ablation:zero", effect=effect, ci_low=effect - 0.5,
                                 ci_high=effect + 0.5, p=0.5, p_adj=0.5, n=8, effect_std=effect / 2,
                                 disruption=0.5, specificity=abs(effect / 2) / 0.5, band="all"))
    frame = pd.DataFrame(rows)
    # planted: mid_block, window 5:10 is the strongest significant effect on colour; up_blocks.0 is
    # larger in |effect| but its CI spans 0, so it must rank after.
    i = (frame.feature == "delta_e2000") & (frame.layer == "mid_block") & (frame.step_start == 5)
    frame.loc[i, ["effect", "effect_std", "specificity", "ci_low", "ci_high", "p"]] = [3.0, 1.5, 3.0, 2.0, 4.0, 1e-4]
    j = (frame.feature == "delta_e2000") & (frame.layer == "up_blocks.0") & (frame.step_start == 0)
    frame.loc[j, ["effect", "effect_std", "specificity", "ci_low", "ci_high"]] = [-9.0, -4.5, 9.0, -20.0, 2.0]
    frame["p_adj"] = table.benjamini_hochberg(frame["p"])
    return frame


def test_validate_names_missing_and_wrong_columns():
    frame = make_frame()
    assert table.validate(frame) is frame
    with pytest.raises(ValueError, match=r"missing columns \['effect'\]"):
        table.validate(frame.drop(columns="effect"))
    with pytest.raises(ValueError, match="'n' \\(expected int"):
        table.validate(frame.assign(n=frame["n"].astype(float)))
    with pytest.raises(ValueError, match="'layer' \\(expected str"):
        table.validate(frame.assign(layer=1))
    with pytest.raises(ValueError, match="step_stop <= step_start"):
        table.validate(frame.assign(step_stop=frame["step_start"]))
    with pytest.raises(TypeError):
        table.validate({"feature": []})


def test_benjamini_hochberg_reference():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    # hand computed BH over the 4 finite values: sorted 0.01,0.03,0.04,0.5 -> 0.04,0.0533,0.0533,0.5
    expected = np.array([0.04, 0.16 / 3, 0.16 / 3, np.nan, 0.5])
    np.testing.assert_allclose(table.benjamini_hochberg(p), expected, rtol=1e-12)


def test_store_round_trip(tmp_path):
    store = RunStore.create(tmp_path / "run.zarr", run_attrs={"model": "x"}, n_samples=2, n_steps=3, chunk_samples=1)
    frame = make_frame()
    table.write_attribution(store, frame, name="scan")
    back = table.read_attribution(tmp_path / "run.zarr", "scan")
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert back["n"].dtype.kind == "i" and back["effect"].dtype.kind == "f"
    with pytest.raises(StoreError, match="overwrite=True"):
        table.write_attribution(tmp_path / "run.zarr", frame, name="scan")
    table.write_attribution(tmp_path / "run.zarr", frame.head(3), name="scan", overwrite=True)
    assert len(table.read_attribution(tmp_path / "run.zarr", "scan")) == 3
    table.write_attribution(tmp_path / "run.zarr", frame.head(2), name="other")
    both = table.read_attribution(tmp_path / "run.zarr")
    assert sorted(both["table"].value_counts().items()) == [("other", 2), ("scan", 3)]
    with pytest.raises(KeyError, match=r"\['other', 'scan'\]"):
        table.read_attribution(tmp_path / "run.zarr", "missing")


def test_rank_puts_significant_first():
    frame = make_frame()
    ranked = table.rank(frame, feature="delta_e2000", top=3)
    assert len(ranked) == 3
    assert (ranked.loc[0, "layer"], ranked.loc[0, "step_start"]) == ("mid_block", 5)
    assert ranked.loc[0, "significant"] and not ranked.loc[1, "significant"]
    assert ranked.loc[1, "layer"] == "up_blocks.0"  # largest |effect| among the non-significant
    with pytest.raises(ValueError, match="delta_e2000"):
        table.rank(frame, feature="nope")
    with pytest.raises(ValueError, match="ablation:zero"):
        table.rank(frame, feature="delta_e2000", method="patching")


def test_to_xarray_dims_and_order():
    frame = make_frame().sample(frac=1.0, random_state=1)  # shuffled rows
    order = ["conv_in", "down_blocks.0", "mid_block", "up_blocks.0"]
    ds = table.to_xarray(frame, layer_order=order)
    assert dict(ds.sizes) == {"feature": 2, "layer": 4, "window": 2, "method": 1}
    assert list(ds["layer"].values) == order
    assert list(ds["window"].values) == ["0:5", "5:10"]
    assert float(ds["effect"].sel({"feature": "delta_e2000", "layer": "mid_block", "window": "5:10",
                                   "method": "ablation:zero"})) == 3.0
    with pytest.raises(ValueError, match="Duplicate"):
        table.to_xarray(pd.concat([frame, frame.head(1)]))


def test_write_into_a_finished_trace_store(tmp_path):
    """A finished run has consolidated metadata: a table written afterwards must still be found."""
    import denoisefeat as dft

    path = tmp_path / "run.zarr"
    run = dft.trace(dft.load_pipeline("tiny-unet"), samples=2, seed=0, steps=2, keep=(), store=path)
    frame = make_frame()
    table.write_attribution(run, frame, name="scan")  # a Run is accepted too
    back = table.read_attribution(dft.open_run(path), "scan")
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert dft.open_run(path)["final"].shape == (2, 3, 16, 16)  # the run is still readable


def test_to_xarray_orders_layers_by_execution(tiny_pipes):
    from denoisefeat.hooks import list_layers

    pipe = tiny_pipes["tiny-class-unet"]
    # named_modules() registers up_blocks before mid_block; the forward pass runs mid_block first
    layers = ["up_blocks.0", "conv_out", "mid_block", "down_blocks.1", "conv_in"]
    rows = [dict(feature="edge_density", layer=layer, step_start=0, step_stop=2, method="ablation:zero",
                 effect=float(i), ci_low=0.0, ci_high=1.0, p=0.5, p_adj=0.5, n=4, effect_std=float(i),
                 disruption=1.0, specificity=float(i)) for i, layer in enumerate(layers)]
    frame = pd.DataFrame(rows)
    expected = ["conv_in", "down_blocks.1", "mid_block", "up_blocks.0", "conv_out"]
    assert list(table.to_xarray(frame, layer_order=pipe)["layer"].values) == expected
    assert list(table.to_xarray(frame, layer_order=list_layers(pipe))["layer"].values) == expected
    ds = table.to_xarray(frame)  # default: order of appearance
    assert list(ds["layer"].values) == layers
    assert float(ds["effect"].sel({"layer": "mid_block", "window": "0:2", "feature": "edge_density",
                                   "method": "ablation:zero"})) == 2.0
    with pytest.raises(ValueError, match="no layers"):
        table.to_xarray(frame.head(1).assign(layer="nope"), layer_order=pipe)
    with pytest.raises(ValueError, match="lacks layers"):
        table.to_xarray(frame, layer_order=["conv_in"])


def test_attribution_names_list_the_stored_tables(tmp_path):
    import denoisefeat as dft
    from denoisefeat.analyses.table import attribution_names

    run = dft.trace(dft.load_pipeline("tiny-unet"), samples=2, steps=2, seed=0, store=tmp_path / "r.zarr")
    assert attribution_names(run) == []
    frame = pd.DataFrame({"feature": ["f"], "layer": ["mid_block"], "step_start": [0], "step_stop": [2],
                          "method": ["m"], "effect": [0.5], "ci_low": [0.1], "ci_high": [0.9], "p": [0.01],
                          "p_adj": [0.01], "n": [2], "effect_std": [0.5], "disruption": [np.nan],
                          "specificity": [np.nan]})
    table.write_attribution(run, frame, name="b")
    table.write_attribution(run, frame, name="a")
    assert attribution_names(tmp_path / "r.zarr") == ["a", "b"]
