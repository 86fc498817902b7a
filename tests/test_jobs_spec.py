"""Job specs: validation with helpful errors, the deterministic task grid, the shipped examples."""

from pathlib import Path

import pytest

from denoisefeat.jobs import SpecError, check_spec, load_spec, parse_spec, task_grid
from denoisefeat.models import TOY_WEIGHTS

EXAMPLES = Path(__file__).parents[1] / "examples"


def _spec(run=None, **sections):
    base = {"model": "tiny-class-unet", "store": "out.zarr", "samples": 10, "steps": 4, "batch_size": 4}
    base.update(run or {})
    return {"run": base, **sections}


def _parse(data, **kw):
    return parse_spec(data, path="/tmp/jobs-spec/spec.toml", check_model=False, **kw)


def test_grid_is_complete_disjoint_chunk_aligned_and_stable():
    data = _spec({"schedulers": ["ddim", "euler"], "steps": [3, 5]}, features={"metrics": ["edge_density"]})
    spec = _parse(data)
    grid = task_grid(spec)
    assert [t.index for t in grid] == list(range(len(grid)))
    assert len(grid) == 4 * 3 * 2  # 4 configurations x 3 sample ranges x (extract, features)
    assert [t.id for t in grid] == [t.id for t in task_grid(_parse(data))]  # same spec, same ids
    assert len({t.id for t in grid}) == len(grid)
    stores = {c.name: c.store for c in spec.configs}
    assert stores["ddim-3"] == Path("/tmp/jobs-spec/out-ddim-3.zarr")
    assert len(set(stores.values())) == 4
    for kind in ("extract", "features"):
        for config in spec.configs:
            ranges = [t.samples for t in grid if t.kind == kind and t.config == config]
            assert ranges == [(0, 4), (4, 8), (8, 10)]  # every sample once, on chunk boundaries
    assert [t.stage for t in grid] == sorted(t.stage for t in grid)  # extraction before features
    assert {t.kind for t in grid if t.stage == 1} == {"features"}
    # one configuration: the store is [run].store itself; chunks_per_task groups chunks
    single = _parse(_spec({"chunks_per_task": 2}))
    assert [t.samples for t in task_grid(single)] == [(0, 8), (8, 10)]
    assert {t.config.store for t in task_grid(single)} == {Path("/tmp/jobs-spec/out.zarr")}
    assert single.jobs_dir == Path("/tmp/jobs-spec/out.jobs")


def test_ablation_grid_and_cyclic_labels():
    data = _spec({"labels": [7, 9], "steps": 6},
                 ablation={"layers": ["mid_block", "up_blocks.*"], "windows": 3, "methods": ["zero", "mean"],
                           "features": ["edges"], "samples": 4})
    spec = _parse(data)
    assert spec.labels == (7, 9) * 5 and spec.seeds == tuple(range(10))
    ablation = [t for t in task_grid(spec) if t.kind == "ablation"]
    assert len(ablation) == 2 * 3 * 2
    assert {t.window_part for t in ablation} == {(0, 3), (1, 3), (2, 3)}
    assert ablation[0].id == "ablation-default-6-mid_block-w0of3-zero"
    assert any(t.id == "ablation-default-6-up_blocks.x-w2of3-mean" for t in ablation)
    pairs = _parse({**data, "ablation": {**data["ablation"], "windows": [[0, 2], [2, 6]]}})
    assert [t.window for t in task_grid(pairs) if t.kind == "ablation"][:2] == [(0, 2), (0, 2)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_spec({"sampels": 3}), "Unknown key 'sampels' in \\[run\\]. Did you mean 'samples'"),
        (_spec(clustr={}), "Unknown section \\[clustr\\]. Did you mean 'cluster'"),
        (_spec({"samples": "ten"}), r"\[run\].samples must be an integer, got str"),
        (_spec({"samples": True}), r"\[run\].samples must be an integer, got bool"),
        (_spec({"steps": [3, 0]}), r"\[run\].steps must be >= 1"),
        (_spec({"schedulers": "dim"}), "unknown scheduler 'dim'. Did you mean 'ddim'"),
        (_spec({"record": {"mid_block": "channel_maen"}}), "channel_mean"),
        (_spec({"seed": [1, 2]}), "2 seeds for 10 samples"),
        (_spec({"labels": [1], "prompts": ["a"]}), "labels or prompts, not both"),
        (_spec({"store": "out"}), "must end in .zarr"),
        (_spec({"model": "tiny-clas-unet"}), "Did you mean 'tiny-class-unet'"),
        (_spec(features={"metrics": ["edge_densty"]}), "Did you mean 'edge_density'"),
        (_spec(features={"metrics": ["edge_f1_gt"]}), "unknown metric|ground truth"),
        (_spec(ablation={"layers": ["mid_block"], "windows": 9}), "between 1 and the fewest steps"),
        (_spec(ablation={"layers": ["mid_block"], "windows": [[2, 1]]}), "start < stop"),
        (_spec(ablation={"layers": ["mid_block"], "windows": 2, "methods": ["zeros"]}), "Did you mean 'zero'"),
        (_spec(ablation={"layers": ["mid_block"], "windows": 2, "samples": 1}), "between 2 and"),
        (_spec(cluster={"scheduler": "lsf"}), "unknown scheduler 'lsf'.* Valid: pbs, slurm"),
        (_spec(cluster={"walltime": "2h"}), "HH:MM:SS"),
        (_spec(cluster={"mem": "lots"}), "16gb"),
        (_spec(cluster={"conda_env": "a", "venv": "b"}), "not both"),
        ({"run": {"model": "toy"}}, r"\[run\].store is required"),
        ({"cluster": {}}, "no \\[run\\] section"),
    ],
)
def test_bad_specs_are_refused_with_hints(data, message):
    with pytest.raises(SpecError, match=message):
        _parse(data)


def test_layers_and_conditions_are_checked_against_the_model(tiny_pipes):
    pipe = tiny_pipes["tiny-class-unet"]
    check_spec(_parse(_spec({"record": {"mid_block": "channel_mean", "down_blocks.*": "full"}})), pipe)
    with pytest.raises(SpecError, match=r"\[run\].record: .*no layer 'mid_blok'.*Closest: mid_block"):
        check_spec(_parse(_spec({"record": {"mid_blok": "channel_mean"}})), pipe)
    with pytest.raises(SpecError, match=r"\[ablation\].layers: .*'up_block.9'"):
        check_spec(_parse(_spec(ablation={"layers": ["up_block.9"], "windows": 2})), pipe)
    with pytest.raises(SpecError, match="takes no prompts"):
        check_spec(_parse(_spec({"prompts": ["a cat"]})), pipe)


def test_load_spec_reads_toml_and_checks_the_model(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text('[run]\nmodel = "tiny-class-unet"\nstore = "o.zarr"\nsamples = 2\nsteps = 2\n'
                    'record = { "mid_blok" = "channel_mean" }\n')
    with pytest.raises(SpecError, match="mid_blok"):
        load_spec(path)  # check_model=True loads the tiny model
    path.write_text("[run\nmodel = 1")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(path)
    with pytest.raises(FileNotFoundError):
        load_spec(tmp_path / "missing.toml")


def _toy_pipeline():
    """The shipped toy model, or (during development) its partly trained export; None if neither."""
    from denoisefeat.models import ClassConditionalImagePipeline, load_pipeline

    if (TOY_WEIGHTS / "model_index.json").exists():
        return load_pipeline("toy")
    if not (TOY_WEIGHTS / "unet" / "config.json").exists():
        return None
    from diffusers import DDIMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(TOY_WEIGHTS / "unet")
    scheduler = DDIMScheduler.from_pretrained(TOY_WEIGHTS / "scheduler")
    return ClassConditionalImagePipeline(unet=unet, scheduler=scheduler, null_class=120)


def test_examples_validate_on_the_toy_model():
    pipe = _toy_pipeline()
    for name in ("frequency_study", "scheduler_comparison", "ablation_study"):
        spec = load_spec(EXAMPLES / f"{name}.toml", check_model=False)
        assert spec.model == "toy"
        grid = task_grid(spec)
        assert grid and all(t.config.store.is_relative_to(Path(__file__).parents[1] / "runs") for t in grid)
        if pipe is None:
            pytest.skip("no toy model weights to check the examples' layers against")
        check_spec(spec, pipe)
    kinds = {t.kind for t in task_grid(load_spec(EXAMPLES / "ablation_study.toml", check_model=False))}
    assert kinds == {"extract", "ablation"}
    assert len(load_spec(EXAMPLES / "scheduler_comparison.toml", check_model=False).configs) == 6
