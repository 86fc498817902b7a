"""Feature-specific queries: the spec, the contrast statistic, a planted model, the toy model, attention words."""

import numpy as np
import pytest
import torch
from diffusers import ConfigMixin, DDIMScheduler, ModelMixin
from diffusers.configuration_utils import register_to_config

import denoisefeat as dft
from denoisefeat.analyses import QuerySpec, QuerySpecError, contrast, rank, run_query, validate
from denoisefeat.analyses.contrast import eta_squared
from denoisefeat.pipelines import ClassConditionalImagePipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------
def test_one_at_a_time_design_and_run_options():
    spec = QuerySpec.from_toml('template = "a {color} {shape}"\nsamples = 2\nseed = 5\n'
                               '[factors]\ncolor = ["red", "blue", "green"]\nshape = ["circle", "square"]\n')
    assert spec.prompts == ("a red circle", "a blue circle", "a green circle", "a red square")
    options = spec.run_options()
    assert options["samples"] == 8 and options["seed"] == [5, 6] * 4
    assert options["prompts"][:3] == ["a red circle", "a red circle", "a blue circle"]
    assert list(spec.levels("color")) == ["red", "red", "blue", "blue", "green", "green", "red", "red"]
    strata = spec.strata("color")  # the red square is no contrast of colour: its own stratum
    assert len(set(strata[:6])) == 1 and strata[6] != strata[0]


def test_toy_spec_maps_conditions_to_class_labels():
    from denoisefeat.toy.diffshapes import condition_label

    spec = QuerySpec.from_toml('classes = "diffshapes"\n[factors]\ncolor = ["red", "blue"]\n'
                               '[base]\nshape = "square"\ntexture = "stripes"\n')
    labels = tuple(condition_label("square", color, "stripes") for color in ("red", "blue"))
    assert spec.class_labels == labels


@pytest.mark.parametrize("text, message", [
    ('[[conditions]]\ncolor = "red"\nshape = "circle"\nprompt = "a red circle"\n'
     '[[conditions]]\ncolor = "blue"\nshape = "square"\nprompt = "a blue square"\n'
     '[factors]\ncolor = ["red", "blue"]\nshape = ["circle", "square"]\n',
     r"'color' is confounded: it changes together with \['shape'\]"),
    ('template = "a {color}"\n[factors]\ncolor = ["red"]\n', "at least two distinct levels"),
    ('template = "a {color}"\n[factors]\ncolor = ["red", "blue"]\n[base]\ncolor = "pink"\n', "base level 'pink'"),
    ('template = "a {colour}"\n[factors]\ncolor = ["red", "blue"]\n', "must name every factor"),
    ('classes = "diffshapes"\n[factors]\ncolor = ["red", "blue"]\n', r"Give the toy model's \['shape', 'texture'\]"),
    ('classes = "diffshapes"\n[factors]\ncolor = ["red", "mauve"]\n[base]\nshape = "circle"\ntexture = "solid"\n',
     "Not a DiffShapes condition"),
    ('template = "a {color}"\nsampels = 3\n[factors]\ncolor = ["red", "blue"]\n', "Unknown query spec keys"),
])
def test_bad_specs_are_refused(text, message):
    with pytest.raises(QuerySpecError, match=message):
        QuerySpec.from_toml(text)


def test_eta_squared_two_levels_is_the_scaled_squared_difference_of_means():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)) + np.repeat([[0.0, 0, 0], [3.0, 0, 0]], 6, axis=0)
    levels, strata = np.repeat(["a", "b"], 6), np.zeros(12, int)
    inference, eta2, n = eta_squared(x, levels, strata, n_permutations=999)
    diff = x[6:].mean(0) - x[:6].mean(0)
    expected = 6 * 6 / 12 * (diff**2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert n == 12 and eta2 == pytest.approx(expected, rel=1e-12)
    assert inference.p < 0.01 and inference.ci_low > 0
    null, _, _ = eta_squared(rng.normal(size=(12, 3)), levels, strata, n_permutations=999)
    assert null.p > 0.05 and null.ci_low <= 0 <= null.ci_high
    constant, eta_c, _ = eta_squared(np.ones((12, 3)), levels, strata, n_permutations=99)
    assert (constant.estimate, constant.p, eta_c) == (0.0, 1.0, 0.0)


# ---------------------------------------------------------------------------------------------
# A planted model: one module per factor
# ---------------------------------------------------------------------------------------------
class PlantedFactors(ModelMixin, ConfigMixin):
    """Class-conditional ε-predictor of 8×8 RGB with label = 2·color + shape (null class 4).

    ``color_path`` sees the colour bit of the label only, ``shape_path`` the shape bit only,
    ``noise_path`` the sample x_t only: by construction the colour lives in ``color_path``, the
    shape in ``shape_path``; ``noise_path`` carries both only through the trajectory (later steps),
    and nothing at step 0 (x_0 of a seed is the same under every condition).
    """

    @register_to_config
    def __init__(self, sample_size: int = 8, in_channels: int = 3, num_class_embeds: int = 5):
        super().__init__()
        size = in_channels * sample_size * sample_size
        self.color_path = torch.nn.Embedding(3, size)
        self.shape_path = torch.nn.Embedding(3, size)
        self.noise_path = torch.nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        null = class_labels == self.config.num_class_embeds - 1
        color = torch.where(null, 2, class_labels // 2)
        shape = torch.where(null, 2, class_labels % 2)
        planted = (0.3 * self.color_path(color) + 0.3 * self.shape_path(shape)).view(sample.shape)
        return (0.5 * self.noise_path(sample) + planted,)


@pytest.fixture(scope="module")
def planted():
    torch.manual_seed(0)
    model = PlantedFactors().eval()
    pipe = ClassConditionalImagePipeline(model, DDIMScheduler(num_train_timesteps=1000))
    spec = QuerySpec.from_toml('samples = 6\n[factors]\ncolor = ["0", "1"]\nshape = ["0", "1"]\n'
                               '[[conditions]]\ncolor = "0"\nshape = "0"\nclass_label = 0\n'
                               '[[conditions]]\ncolor = "1"\nshape = "0"\nclass_label = 2\n'
                               '[[conditions]]\ncolor = "0"\nshape = "1"\nclass_label = 1\n')
    layers = ["color_path", "shape_path", "noise_path"]
    run = run_query(pipe, spec, steps=4, keep=(), record={name: "full" for name in layers})
    return spec, run


def test_planted_module_ranks_first_for_its_factor(planted):
    spec, run = planted
    table = validate(contrast(run, spec, windows=[(0, 1), (1, 4)], n_permutations=999))
    assert set(table["method"]) == {"contrast:activations"}
    for factor, carrier in (("color", "color_path"), ("shape", "shape_path")):
        top = rank(table, feature=factor)
        assert top.loc[0, "layer"] == carrier and top.loc[0, "significant"]
        assert table[(table.feature == factor) & (table.layer == carrier)]["eta2"].min() == pytest.approx(1.0)
    other = table[(table.feature == "color") & (table.layer == "shape_path")]
    assert (other["effect"] == 0).all() and (other["p"] == 1).all()  # constant where the colour changes
    first = table[(table.layer == "noise_path") & (table.step_start == 0)]
    assert (first["effect"] < 0).all() and (first["eta2"] < 1e-10).all()  # x_0 is the same noise: wrong-signed


def test_contrast_refuses_a_run_of_another_spec(planted):
    spec, run = planted
    other = QuerySpec.from_toml('samples = 5\n[factors]\ncolor = ["0", "1"]\n'
                                '[[conditions]]\ncolor = "0"\nclass_label = 0\n'
                                '[[conditions]]\ncolor = "1"\nclass_label = 2\n')
    with pytest.raises(QuerySpecError, match="not traced with this query spec"):
        contrast(run, other)
    with pytest.raises(QuerySpecError, match="Unknown factor"):
        contrast(run, spec, factors=["texture"], n_permutations=99)
    with pytest.raises(ValueError, match="n_permutations"):
        contrast(run, spec, n_permutations=5)
    with pytest.raises(QuerySpecError, match="class conditions"):
        contrast(run, spec, source="attention")


# ---------------------------------------------------------------------------------------------
# The toy model: every class factor is significant somewhere
# ---------------------------------------------------------------------------------------------
def test_toy_model_every_factor_significant_somewhere():
    pipe = dft.load_pipeline("toy")
    spec = QuerySpec.from_toml('classes = "diffshapes"\nsamples = 6\n[factors]\nshape = ["circle", "square"]\n'
                               'color = ["red", "blue"]\ntexture = ["solid", "stripes"]\n')
    layers = ["down_blocks.2", "mid_block", "up_blocks.1"]
    run = run_query(pipe, spec, steps=4, keep=(), record={name: "channel_mean" for name in layers})
    table = contrast(run, spec, windows=2, n_permutations=999)
    for factor in spec.factors:
        assert rank(table, feature=factor).loc[0, "significant"], factor


# ---------------------------------------------------------------------------------------------
# Prompts: which words' attention maps carry a factor
# ---------------------------------------------------------------------------------------------
def test_attention_word_contrast_on_tiny_sd(tmp_path):
    from denoisefeat.viz.attention import word_contrast_heatmap, word_step_grid
    from denoisefeat.viz.report import build_report

    pipe = dft.load_pipeline("tiny-sd")
    spec = QuerySpec.from_toml('template = "a {color} {shape}"\nsamples = 3\n'
                               '[factors]\ncolor = ["red", "blue"]\nshape = ["circle", "square"]\n')
    run = run_query(pipe, spec, steps=2, keep=(), guidance_scale=2.0, attention=True, attention_resolution=4)
    table = validate(contrast(run, spec, source="attention", windows=1, n_permutations=99))
    assert set(table["word"]) == {"a", "{color}", "{shape}"}
    assert len(table) == len(run.attention_layers()) * 3 * 2
    assert set(table["method"]) == {"contrast:attention"}
    top = rank(table, feature="color")
    assert set(top["layer"]) <= set(run.attention_layers())
    # the report sections: per-word maps × steps, and the word × layer contrast
    grid = word_step_grid(run, run.attention_layers()[0], max_steps=2)
    assert len(grid.data) == 3 * 2 and grid.data[0].z.shape == (4, 4)
    assert word_contrast_heatmap(table, feature="shape").data[0].z.shape == (3, len(run.attention_layers()))
    with pytest.raises(ValueError, match="no 'word' column"):
        word_contrast_heatmap(table.drop(columns="word"), feature="shape")
    html = build_report(run, tmp_path / "report.html", attribution=table).read_text()
    assert 'id="attention"' in html and 'id="contrasts"' in html and "{color}" in html


def test_cli_contrast_and_extract_attention(tmp_path):
    from typer.testing import CliRunner

    from denoisefeat.analyses import attribution_names
    from denoisefeat.cli import app

    spec = tmp_path / "query.toml"
    spec.write_text('template = "a {color} {shape}"\nsamples = 2\n'
                    '[factors]\ncolor = ["red", "blue"]\nshape = ["circle", "square"]\n')
    out = tmp_path / "query.zarr"
    runner = CliRunner()
    result = runner.invoke(app, ["contrast", str(spec), "tiny-sd", "--out", str(out), "--steps", "2",
                                 "--attention", "all", "--windows", "1", "--permutations", "99"])
    assert result.exit_code == 0, result.output
    assert attribution_names(out) == ["contrast_attention"] and "attention contrast" in result.output
    result = runner.invoke(app, ["contrast", str(spec), "tiny-sd", "--out", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2 and "Name what to contrast" in result.output
    run_out = tmp_path / "run.zarr"
    result = runner.invoke(app, ["extract", "tiny-sd", "--prompt", "a red circle", "--steps", "2", "--out",
                                 str(run_out), "--attention", "mid_block.**.attn2"])
    assert result.exit_code == 0, result.output
    assert dft.open_run(run_out).attention_layers() == ["mid_block.attentions.0.transformer_blocks.0.attn2"]
