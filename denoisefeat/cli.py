"""The ``denoisefeat`` command line (typer + rich).

Errors the user can fix (a bad model name, a store that exists, a wrong number of seeds…) print
one line and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no notes about optional image backends

import click
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="denoisefeat",
    help="How and where a diffusion model builds an image: capture, decompose, measure, attribute.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
toy_app = typer.Typer(help="The DiffShapes toy model: train it, evaluate it.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")
from denoisefeat.jobs.cli import app as jobs_app  # noqa: E402  (light: torch is imported per command)

app.add_typer(jobs_app, name="jobs")

console = Console(stderr=True)
_DEBUG = {"on": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _DEBUG["on"] = debug or bool(os.environ.get("DENOISEFEAT_DEBUG"))


def _error(message: str) -> None:
    """One line on stderr; the message is text (a prompt or a path may hold rich markup)."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def _damage_of(kwargs) -> str | None:
    """When a command failed on a store: the store's damage, read chunk by chunk (None if undamaged)."""
    from denoisefeat.store import RunStore, StoreError, describe_damage, is_run_store

    for key in ("store", "out"):
        path = kwargs.get(key)
        if isinstance(path, Path) and is_run_store(path):
            try:
                store = RunStore.open(path, mode="r", verify=False)
                damage = store.damage(decode=True)
            except StoreError as error:
                return str(error)
            except Exception:  # noqa: BLE001  (the original error is the one to show)
                return None
            if damage:
                return describe_damage(store, damage)
    return None


def _friendly(func):
    """Turn the errors a user can fix into one line on stderr and exit status 2.

    An unexpected error on a store that turns out to be damaged (a chunk that does not decode)
    is reported as the damage it is.
    """
    from denoisefeat.locking import TaskLockedError

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException):
            raise
        except (ValueError, KeyError, TypeError, FileNotFoundError, OSError, TaskLockedError) as error:
            if _DEBUG["on"]:
                raise
            damage = _damage_of(kwargs) if isinstance(error, KeyError) else None  # a missing array, say
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            _error(damage or message)
            raise typer.Exit(code=2) from None
        except Exception:
            if _DEBUG["on"]:
                raise
            damage = _damage_of(kwargs)
            if damage is None:
                raise
            _error(damage)
            raise typer.Exit(code=2) from None

    return wrapper


def _run_cli_options(*, steps: int, samples_help: str) -> list[tuple[str, str, object, object]]:
    """The run options as typer options: ``(parameter, RunOptions field, annotation, option)``."""
    return [
        ("samples", "samples", int, typer.Option(None, "--samples", "-n", help=samples_help)),
        ("label", "class_labels", list[int],
         typer.Option(None, "--label", "-l", help="Class label (repeat for several).")),
        ("prompt", "prompts", list[str], typer.Option(None, "--prompt", "-p", help="Prompt (repeat for several).")),
        ("negative_prompt", "negative_prompt", str,
         typer.Option(None, "--negative-prompt", help="Negative prompt for every sample under guidance.")),
        ("seed", "seed", int, typer.Option(0, "--seed", help="Sample i uses seed + i.")),
        ("steps", "steps", int, typer.Option(steps, "--steps", "-s", help="Inference steps.")),
        ("scheduler", "scheduler", str,
         typer.Option(None, "--scheduler", help="ddim, ddpm, euler, heun, dpm++, unipc, flow-euler.")),
        ("guidance", "guidance_scale", float,
         typer.Option(None, "--guidance", help="Classifier-free guidance scale (default: the pipeline's).")),
        ("eta", "eta", float, typer.Option(0.0, "--eta", help="DDIM's eta (0: deterministic).")),
        ("height", "height", int, typer.Option(None, "--height", help="Image height (latent text-to-image models).")),
        ("width", "width", int, typer.Option(None, "--width", help="Image width (latent text-to-image models).")),
        ("batch_size", "batch_size", int,
         typer.Option(8, "--batch-size", help="Samples per batch (and per store chunk).")),
    ]


def _with_run_options(*, steps: int, samples_help: str):
    """Give a command the run options of :class:`denoisefeat.options.RunOptions`, declared once here.

    The command takes ``run`` (a dict of RunOptions fields, ready for ``**run``) instead of the
    options themselves; its signature, as typer reads it, gains one typer option per field.
    """
    import inspect

    options = _run_cli_options(steps=steps, samples_help=samples_help)

    def decorate(command):
        signature = inspect.signature(command)
        own = [parameter for parameter in signature.parameters.values() if parameter.name != "run"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
                 for name, _, annotation, option in options]

        @functools.wraps(command)
        def wrapper(**kwargs):
            run = {field: kwargs.pop(name) for name, field, _, _ in options}
            run["class_labels"], run["prompts"] = run["class_labels"] or None, run["prompts"] or None
            return command(**kwargs, run=run)

        wrapper.__signature__ = signature.replace(parameters=own + added)
        return wrapper

    return decorate


@app.command()
@_friendly
@_with_run_options(steps=50, samples_help="Number of samples (default: one per prompt/label).")
def extract(
    model: str = typer.Argument(
        ..., help="Built-in name ('toy', 'planted', 'tiny-sd', …), a save_pretrained folder, or a Hub id."),
    out: Path = typer.Option(..., "--out", "-o", help="The zarr store to write (e.g. run.zarr)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps …"),
    fp16: bool = typer.Option(False, "--fp16", help="Run the model in float16."),
    resume: bool = typer.Option(False, "--resume", help="Complete a half-written store made with the same settings."),
    overwrite: bool = typer.Option(
        False, "--overwrite",
        help="Replace an existing denoisefeat store (the old one stays until the new one is complete)."),
    repair: bool = typer.Option(
        False, "--repair",
        help="With --resume: recompute the samples whose chunks are missing or damaged (see `check`)."),
    record: list[str] = typer.Option(
        None, "--record", "-r",
        help="LAYER=REDUCER[,REDUCER] to record (repeatable; globs allowed), e.g. 'mid_block=channel_mean'.",
    ),
    backend: str = typer.Option("torch", "--backend", help="Hook backend for --record: torch or nnsight."),
    attention: list[str] = typer.Option(
        None, "--attention",
        help="Cross-attention layers whose per-token maps to store (repeatable; globs; 'all': every one)."),
    run: dict = None,
) -> None:
    """Run MODEL's denoising loop and store every step (x_t, x̂0, decoded image) in a zarr store."""
    import torch

    from denoisefeat.models import load_pipeline
    from denoisefeat.trajectory import trace

    pipe = load_pipeline(model, device=device, dtype=torch.float16 if fp16 else None)
    result = trace(
        pipe, store=out, resume=resume, overwrite=overwrite, model_id=model, progress=True,
        record=parse_record(record), backend=backend, repair=repair, attention=_attention_layers(attention), **run,
    )
    console.print(f"wrote {result.path}", markup=False, highlight=False)
    _print_info(result)


def _attention_layers(items: list[str] | None):
    """``--attention`` values → ``trace(attention=...)``: None, True (``all``) or the layer globs."""
    if not items:
        return None
    return True if items == ["all"] else list(items)


@app.command()
@_friendly
def contrast(
    spec: Path = typer.Argument(..., help="A query spec (TOML): factors, levels, template or classes."),
    model: str = typer.Argument(..., help="Built-in name ('toy', 'tiny-sd', …), a local folder, or a Hub id."),
    out: Path = typer.Option(..., "--out", "-o", help="The zarr store to write (e.g. query.zarr)."),
    record: list[str] = typer.Option(
        None, "--record", "-r", help="LAYER=REDUCER[,REDUCER] to record and contrast (repeatable; globs allowed)."),
    attention: list[str] = typer.Option(
        None, "--attention", help="Cross-attention layers whose word maps to contrast (repeatable; 'all')."),
    steps: int = typer.Option(20, "--steps", "-s", help="Inference steps."),
    guidance: float = typer.Option(None, "--guidance", help="Guidance scale (default: the pipeline's)."),
    windows: str = typer.Option("3", "--windows", help="Step windows: a number, or start:stop pairs (0:5,5:20)."),
    permutations: int = typer.Option(999, "--permutations", help="Permutations per row."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps …"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
    top: int = typer.Option(3, "--top", help="Rows per factor in the printed summary."),
) -> None:
    """Run a feature-specific query (SPEC) on MODEL and store which layers × steps separate each factor."""
    from denoisefeat.analyses import QuerySpec, run_query, write_attribution
    from denoisefeat.analyses import contrast as contrast_table
    from denoisefeat.models import load_pipeline
    from denoisefeat.store import replacement

    query = QuerySpec.from_toml(spec)
    layers, maps = parse_record(record), _attention_layers(attention)
    if layers is None and maps is None:
        raise ValueError("Name what to contrast: --record LAYER=REDUCER and/or --attention LAYER (or all).")
    pipe = load_pipeline(model, device=device)
    with replacement(out, overwrite=overwrite) as target:  # an old store stays until the tables are written
        run = run_query(pipe, query, store=target, overwrite=overwrite, model_id=model, progress=True, steps=steps,
                        guidance_scale=guidance, keep=("x0",), record=layers, attention=maps)
        for source, name, wanted in (("activations", "contrast", layers), ("attention", "contrast_attention", maps)):
            if wanted is None:
                continue
            frame = contrast_table(run, query, source=source, windows=_windows(windows), n_permutations=permutations)
            write_attribution(target, frame, name=name, overwrite=True)
            _print_top(frame, title=f"{source} contrast → {out}/attribution/{name} ({len(frame)} rows; effect: "
                                    f"η² over its permutation mean)", top=top)


def parse_record(items: list[str] | None) -> dict[str, list[str]] | None:
    """``["mid_block=channel_mean", "up_blocks.*=full,band_energy"]`` → ``{layer: [reducers]}``."""
    if not items:
        return None
    spec: dict[str, list[str]] = {}
    for item in items:
        layer, sep, reducers = item.partition("=")
        if not sep or not layer or not reducers:
            raise ValueError(f"--record {item!r}: write LAYER=REDUCER, e.g. mid_block=channel_mean.")
        spec.setdefault(layer.strip(), []).extend(r.strip() for r in reducers.split(","))
    return spec


@app.command()
@_friendly
def info(store: Path = typer.Argument(..., help="A denoisefeat zarr store.")) -> None:
    """Describe a run store: model, scheduler, samples, steps, arrays, completeness."""
    from denoisefeat.store import open_run

    _print_info(open_run(store, allow_incomplete=True))


@app.command()
@_friendly
def check(store: Path = typer.Argument(..., help="A denoisefeat zarr store.")) -> None:
    """Read every chunk of STORE and list what is missing or damaged (exit 1 if anything is)."""
    from rich.markup import escape

    from denoisefeat.store import RunStore, describe_damage

    run_store = RunStore.open(store, mode="r", verify=False)
    with console.status("reading every chunk"):
        damage = run_store.damage(decode=True)
    out = Console()
    if not damage:
        out.print(f"{escape(str(run_store.path))}: every chunk is present and decodes", highlight=False)
        return
    for d in damage:
        samples = "" if d.samples is None else f" samples {d.samples[0]}–{d.samples[1] - 1}"
        out.print(f"{d.problem:11s} {escape(d.file)}{samples}", highlight=False)
    _error(describe_damage(run_store, damage))
    raise typer.Exit(code=1)


def _print_info(run) -> None:
    from rich.markup import escape

    attrs = {k: escape(str(v)) if isinstance(v, str) else v for k, v in run.attrs.items()}
    done = run.store.completed()
    table = Table(title=escape(str(run.path or "in-memory run")), show_header=False, title_justify="left")
    table.add_row("model", f"{attrs['model_id']} ({attrs['pipeline_class']}, {attrs['denoiser_class']})")
    table.add_row("scheduler", f"{attrs['scheduler_class']}, prediction {attrs['prediction_type']}")
    table.add_row("samples", f"{run.store.n_samples} ({int(done.sum())} complete)")
    table.add_row("loop steps", f"{run.store.n_steps} ({attrs['steps']} inference steps)")
    table.add_row("guidance", str(attrs["guidance_scale"]))
    conditions = attrs.get("prompts") or attrs.get("class_labels")
    if conditions:
        shown = ", ".join(map(str, conditions[:4])) + (" …" if len(conditions) > 4 else "")
        table.add_row("conditions", escape(shown))
    for name in ("xt", "x0", "images", "final"):
        if run.store.holds(name):
            array = run.store.array(name)
            dims = ", ".join(f"{d}={s}" for d, s in zip(array.metadata.dimension_names, array.shape, strict=True))
            table.add_row(name, f"({dims}) {array.dtype}")
    for layer in run.layers():
        table.add_row("acts", escape(layer))
    Console().print(table)


@app.command()
@_friendly
def analyze(
    store: Path = typer.Argument(..., help="A denoisefeat zarr store (from `denoisefeat extract`)."),
    metrics: str = typer.Option(None, "--metrics", help="Metrics to compute, comma-separated (default: all)."),
    samples: str = typer.Option(
        None, "--samples", help="A:B, only these samples (whole store chunks; a task's share)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute features that are already stored."),
    device: str = typer.Option(None, "--device", help="Compute the features in torch on this device (cuda, cpu); "
                               "default numpy on the host."),
) -> None:
    """Compute per-step features into STORE's features/ group, then print when each feature emerges."""
    from rich.markup import escape

    from denoisefeat.step_features import features
    from denoisefeat.temporal import emergence_order, profiles

    names = None if metrics is None else [m.strip() for m in metrics.split(",") if m.strip()]
    feats = features(store, metrics=names, samples=_sample_range(samples), overwrite=overwrite, progress=True,
                     device=device)
    prof = profiles(feats)
    n_steps = feats.sizes["step"]
    table = Table(title=f"feature emergence: {escape(str(store))} ({feats.sizes['sample']} samples × {n_steps} steps; "
                        f"median over samples [{prof.attrs['ci']:.0%} CI])", title_justify="left")
    for column in ("profile", "emergence step", "t/T", "stabilisation step", "t/T"):
        table.add_column(column, justify="left" if column == "profile" else "right")

    def cell(measure, name):
        low, mid, high = (float(prof[f"{measure}_summary"].sel(profile=name, stat=s)) for s in
                          ("median_low", "median", "median_high"))
        t_median = float(prof[f"{measure}_t_summary"].sel(profile=name, stat="median"))
        return f"{mid:g} [{low:g}, {high:g}]", f"{t_median:.2f}"

    for name in emergence_order(prof):
        table.add_row(escape(name), *cell("emergence", name), *cell("stabilisation", name))
    Console().print(table)


def _sample_range(text: str | None) -> slice | None:
    """``"0:8"`` → ``slice(0, 8)``."""
    if text is None:
        return None
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return slice(int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise ValueError(f"--samples {text!r}: write A:B (sample indices, B excluded), e.g. 0:8.") from None


# ---------------------------------------------------------------------------------------------
# Attribution: probes, ablation scans, causal tracing, statistics
# ---------------------------------------------------------------------------------------------
attribute_app = typer.Typer(
    help="Which layers and step windows make edges, texture, shape and colour: ablation scans, causal "
         "tracing (activation patching), attribution patching (first-order estimates), correlation and regression.",
    no_args_is_help=True,
)
app.add_typer(attribute_app, name="attribute")


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _windows(text: str):
    """``"5"`` → 5 equal windows; ``"0:5,5:20"`` → explicit half-open windows."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        pairs = [tuple(int(v) for v in part.split(":")) for part in text.split(",") if part.strip()]
        if not pairs or any(len(pair) != 2 for pair in pairs):
            raise ValueError
    except ValueError:
        raise ValueError(f"--windows {text!r}: give a number of windows (5) or start:stop pairs (0:5,5:20).") from None
    return pairs


def _spec_defaults(ctx: typer.Context, value: Path | None) -> Path | None:
    """``--spec FILE``: a TOML table of option values (keys as the long option names) used as defaults."""
    if value is None or ctx.resilient_parsing:
        return value
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    try:
        table = tomllib.loads(Path(value).read_text())
    except (OSError, ValueError) as error:
        raise typer.BadParameter(f"cannot read {value}: {error}") from None
    table = table.get("attribute", table)  # a spec may hold its options under [attribute]
    names = {param.name: param for param in ctx.command.params if param.name != "spec"}
    defaults = {}
    for key, item in table.items():
        name = key.replace("-", "_")
        if name not in names:
            import difflib

            close = difflib.get_close_matches(name, list(names), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(names))}"
            raise typer.BadParameter(f"unknown key {key!r} in {value}{hint}")
        defaults[name] = [str(v) for v in item] if isinstance(item, list) else item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


_SPEC_OPTION = typer.Option(
    None, "--spec", is_eager=True, callback=_spec_defaults,
    help="TOML file of option values (e.g. layer = [\"mid_block\"], windows = \"5\", model = \"toy\"); "
         "flags override it.",
)


def _scan_pipe(model: str | None, device: str, fp16: bool):
    import torch

    from denoisefeat.models import load_pipeline

    if model is None:
        raise ValueError("Say which model: denoisefeat attribute scan MODEL ... (or model = \"...\" in --spec).")
    return load_pipeline(model, device=device, dtype=torch.float16 if fp16 else None)


def _refuse_existing_table(store: Path, name: str, *, overwrite: bool) -> None:
    """Fail before the work, not after it, when the table would not be written."""
    from denoisefeat.analyses.table import attribution_names

    if not overwrite and name in attribution_names(store):
        raise ValueError(f"{store} already holds attribution/{name}; pass --overwrite to replace it.")


def _print_top(frame, *, title: str, top: int, by: str | None = None) -> None:
    """The top rows of every feature by :func:`~denoisefeat.analyses.table.rank`; dim: not significant."""
    from rich.markup import escape

    from denoisefeat.analyses.table import rank

    level = f"{100 * (1 - frame.attrs.get('alpha', 0.05)):g}% CI"
    table = Table(title=escape(title), title_justify="left")
    numeric = ("effect", "std. effect", "specificity", level, "p_adj")
    for column in ("feature", "layer", "steps", "method", *numeric):
        table.add_column(column, justify="right" if column in numeric else "left")
    for feature in sorted(frame["feature"].unique()):
        for row in rank(frame, feature=feature, by=by, top=top).itertuples():
            table.add_row(escape(row.feature), escape(row.layer), f"{row.step_start}-{row.step_stop}",
                          escape(row.method), f"{row.effect:+.4g}", f"{row.effect_std:+.3g}",
                          # NaN specificity: not an intervention
                          "—" if row.specificity != row.specificity else f"{row.specificity:.3g}",
                          f"[{row.ci_low:+.3g}, {row.ci_high:+.3g}]", f"{row.p_adj:.2g}",
                          style=None if row.significant else "dim")
    Console().print(table)


# Options shared by `attribute scan` and `attribute trace` (typer reuses an option object safely).
_MODEL = typer.Argument(None, help="toy, planted, tiny-*, a save_pretrained folder or a hub id (or model in --spec).")
_WINDOWS = typer.Option("5", "--windows", help="Number of step windows, or start:stop pairs (0:5,5:20).")
_FEATURES = typer.Option("edges,texture,shape,color", "--features", help="Feature groups or metric names.")
_SCAN_RUN_OPTIONS = _with_run_options(steps=20, samples_help="Samples (default: one per label/prompt, or 8).")
_N_BOOT = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the CIs and p-values.")
_RANK_BY = typer.Option(None, "--rank-by",
                        help="Order of the printed rows: specificity (default) or effect (standardised).")
_DEVICE = typer.Option("cpu", "--device", help="cpu, cuda, mps …")
_FP16 = typer.Option(False, "--fp16", help="Run the model in float16.")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing denoisefeat store.")
_TOP = typer.Option(3, "--top", help="Rows per feature in the printed summary.")
_KEEP_IMAGES = typer.Option(0, "--keep-images", min=0,
                            help="Keep the final images of the first K samples of every edited run beside the table "
                                 "(the viewer and report show them when a cell is clicked).")


@attribute_app.command("scan")
@_friendly
@_SCAN_RUN_OPTIONS
def attribute_scan(
    model: str = _MODEL,
    out: Path = typer.Option(..., "--out", "-o", help="Store for the clean run and attribution/ablation."),
    layer: list[str] = typer.Option(..., "--layer", help="Module path or glob to ablate (repeat for several)."),
    windows: str = _WINDOWS,
    method: list[str] = typer.Option(["zero"], "--method",
                                     help="zero, mean, resample, or identity (the null control); repeat for several."),
    features: str = _FEATURES,
    keep_images: int = _KEEP_IMAGES,
    device: str = _DEVICE,
    fp16: bool = _FP16,
    overwrite: bool = _OVERWRITE,
    top: int = _TOP,
    rank_by: str = _RANK_BY,
    spec: Path = _SPEC_OPTION,
    run: dict = None,
) -> None:
    """Ablate each layer in each step window; print and store the change of every final-image feature."""
    from denoisefeat.analyses.ablation import ablation_scan

    pipe = _scan_pipe(model, device, fp16)
    frame = ablation_scan(
        pipe, layers=list(layer), windows=_windows(windows), method=list(method), features=_split(features),
        keep_images=keep_images, **run,
        store=out, overwrite=overwrite, progress=True,
    )
    calls = frame.attrs.get("denoiser_calls")
    _print_top(frame, title=f"ablation scan → {out}/attribution/ablation ({len(frame)} rows, {calls} denoiser "
                            "calls; dim rows: not significant)", top=top, by=rank_by)


@attribute_app.command("trace")
@_friendly
@_SCAN_RUN_OPTIONS
def attribute_trace(
    model: str = _MODEL,
    out: Path = typer.Option(..., "--out", "-o", help="Store for the clean run and attribution/causal_tracing."),
    layer: list[str] = typer.Option(..., "--layer", help="Module path or glob to restore (repeat for several)."),
    windows: str = _WINDOWS,
    corrupt: str = typer.Option(
        "condition", "--corrupt", help="condition (other labels/prompts) or noise (other seeds)."),
    corrupt_label: list[int] = typer.Option(
        None, "--corrupt-label", help="Corrupted class label (default: the null class)."),
    corrupt_prompt: list[str] = typer.Option(None, "--corrupt-prompt", help="Corrupted prompt (default: empty)."),
    corrupt_seed: int = typer.Option(
        None, "--corrupt-seed", help="First seed of the corrupted noise (--corrupt noise)."),
    features: str = _FEATURES,
    keep_images: int = _KEEP_IMAGES,
    n_boot: int = _N_BOOT,
    device: str = _DEVICE,
    fp16: bool = _FP16,
    overwrite: bool = _OVERWRITE,
    top: int = _TOP,
    rank_by: str = _RANK_BY,
    spec: Path = _SPEC_OPTION,
    run: dict = None,
) -> None:
    """Corrupt the run, restore one layer × window of clean activations at a time; print the recovered fraction."""
    from denoisefeat.analyses.ablation import causal_trace

    pipe = _scan_pipe(model, device, fp16)
    frame = causal_trace(
        pipe, layers=list(layer), windows=_windows(windows), corrupt=corrupt,
        corrupt_class_labels=corrupt_label or None, corrupt_prompts=corrupt_prompt or None,
        corrupt_seed=corrupt_seed, features=_split(features), keep_images=keep_images,
        **run, n_boot=n_boot,
        store=out, overwrite=overwrite, progress=True,
    )
    _print_top(frame, title=f"causal tracing → {out}/attribution/causal_tracing ({len(frame)} rows; effect: "
                            "fraction of the clean feature recovered)", top=top, by=rank_by)


@attribute_app.command("patching")
@_friendly
@_SCAN_RUN_OPTIONS
def attribute_patching(
    model: str = _MODEL,
    out: Path = typer.Option(..., "--out", "-o", help="Store for the clean run and attribution/attribution_patching."),
    layer: list[str] = typer.Option(..., "--layer", help="Module path or glob to estimate (repeat for several)."),
    windows: str = typer.Option(None, "--windows",
                                help="Number of step windows, or start:stop pairs (default: every step)."),
    method: str = typer.Option("zero", "--method", help="zero, mean, resample, or identity (the null control)."),
    features: str = _FEATURES,
    estimator: str = typer.Option(
        "first_order", "--estimator",
        help="first_order (one backward pass for all layers) or exact_step (each edited step run exactly: one "
             "denoiser call per layer and step; ranks like the exact scan where first_order does not)."),
    disruption_probes: int = typer.Option(
        4, "--disruption-probes", min=0,  # DISRUPTION_PROBES (torch is imported per command; a test checks)
        help="Random projections of the final image that estimate each cell's disruption and specificity (one "
             "backward pass per step each); 0: none, rank by effect."),
    verify_top: int = typer.Option(0, "--verify-top",
                                   help="Ablate the top K cells per feature exactly and report the agreement."),
    device: str = _DEVICE,
    fp16: bool = _FP16,
    overwrite: bool = _OVERWRITE,
    rank_by: str = _RANK_BY,
    top: int = _TOP,
    spec: Path = _SPEC_OPTION,
    run: dict = None,
) -> None:
    """Estimate every layer × step ablation at once from one backward pass (attribution patching)."""
    from denoisefeat.analyses.attribution_patching import attribution_patching, attribution_study

    pipe = _scan_pipe(model, device, fp16)
    options = dict(layers=list(layer), windows=None if windows is None else _windows(windows), method=method,
                   features=_split(features), estimator=estimator, disruption_probes=disruption_probes, **run,
                   store=out, overwrite=overwrite, progress=True)
    by = rank_by if rank_by is not None or disruption_probes > 0 else "effect"
    if verify_top > 0:
        frame = attribution_study(pipe, top_k=verify_top, **options)
        for method_name in sorted(frame["method"].unique()):
            _print_top(frame[frame["method"] == method_name], title=f"{method_name} (top cells)", top=top, by=by)
        for feature, agreed in frame.attrs["agreement"].items():
            rho = "—" if agreed["spearman"] is None else f"{agreed['spearman']:+.2f}"
            verdict = "agrees" if agreed["top_agrees"] else "differs"
            Console().print(f"{feature}: Spearman {rho} over {agreed['n_cells']} cells; exact top "
                            f"{agreed['top_exact']} ({verdict})")
        return
    frame = attribution_patching(pipe, **options)
    _print_top(frame, title=f"attribution patching → {out}/attribution/attribution_patching ({len(frame)} rows, "
                            f"{frame.attrs['denoiser_equivalents']} denoiser-equivalent evaluations; dim rows: not "
                            "significant)", top=top, by=by)


@attribute_app.command("stats")
@_friendly
def attribute_stats(
    store: Path = typer.Argument(
        ..., help="A store with recorded activations (extract --record) and features (analyze)."),
    method: str = typer.Option(
        "correlation", "--method", help="correlation (Pearson/Spearman) or regression (statsmodels)."),
    layers: str = typer.Option(None, "--layers", help="Recorded layers, comma-separated (default: all)."),
    features: str = typer.Option(
        None, "--features", help="Feature variables of features/, comma-separated (default: the metrics)."),
    of: str = typer.Option(
        "change", "--of", help="Activity of the layer's per-step change (default) or of its value."),
    stat: str = typer.Option("norm", "--stat", help="Activity per (sample, step): norm, mean or rms."),
    kind: str = typer.Option(
        None, "--kind", help="correlation: pearson (default) or spearman; regression: ols (default) or mixedlm."),
    windows: str = typer.Option("5", "--windows", help="regression: number of step windows or start:stop pairs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a stored table of the same method."),
    top: int = typer.Option(3, "--top", help="Rows per feature in the printed summary."),
) -> None:
    """Relate per-step layer activity to per-step feature change across samples (BH-corrected)."""
    from denoisefeat.analyses.correlation import activity, correlate, feature_change
    from denoisefeat.analyses.regression import regress
    from denoisefeat.analyses.table import write_attribution
    from denoisefeat.step_features import load_features
    from denoisefeat.store import open_run

    if method not in ("correlation", "regression"):
        raise ValueError(f"--method must be correlation or regression, got {method!r}.")
    run = open_run(store)
    _refuse_existing_table(store, method, overwrite=overwrite)
    names = _split(layers) or run.layers()
    if not names:
        raise ValueError(
            f"{store} has no recorded activations: trace it with `denoisefeat extract ... --record LAYER`.")
    acts = {}
    for name in names:  # under classifier-free guidance: the conditional branch
        data = run.acts(name)
        acts[name] = activity(data, of=of, stat=stat, branch="cond" if "branch" in data.dims else None)
    feats = load_features(store)
    scalar = [name for name in feats.data_vars if feats[name].dims == ("sample", "step")]  # one value per step
    wanted = _split(features) or scalar
    missing = [name for name in wanted if name not in scalar]
    if missing:
        raise ValueError(f"Unknown features {missing}; the store's per-step features are {scalar}.")
    change = feature_change(feats[wanted])
    if method == "correlation":
        frame = correlate(acts, change, method=kind or "pearson")
    else:
        frame = regress(acts, change, model=kind or "ols", windows=_windows(windows))
    write_attribution(store, frame, name=method, overwrite=overwrite)
    _print_top(frame, title=f"{method} → {store}/attribution/{method} ({len(frame)} rows)", top=top)


@app.command()
@_friendly
def probe(
    store: Path = typer.Argument(..., help="A store with recorded activations (denoisefeat extract --record)."),
    targets: str = typer.Option(
        "all", "--targets", help="features (final-image metrics), labels (the conditioning) or all."),
    metrics: str = typer.Option(
        None, "--metrics", help="Final-image metrics to probe, comma-separated (default: edges, texture, colour)."),
    layers: str = typer.Option(None, "--layers", help="Recorded layers, comma-separated (default: all)."),
    control: str = typer.Option("xt", "--control", help="Selectivity baseline: xt (a probe on x_t) or shuffled."),
    windows: str = typer.Option(None, "--windows",
                                help="Step windows, one probe each: a number of windows or start:stop pairs "
                                     "(0:5,5:20); default one per step."),
    cv: int = typer.Option(5, "--cv", help="Cross-validation folds (over samples)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the CIs."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a stored probe table."),
    top: int = typer.Option(3, "--top", help="Rows per target in the printed summary."),
) -> None:
    """Fit cross-validated linear probes per recorded layer × step; store and print their selectivity."""
    from denoisefeat.analyses.table import write_attribution
    from denoisefeat.probes import probe_table
    from denoisefeat.probes.targets import final_feature_targets, label_targets
    from denoisefeat.store import open_run

    if targets not in ("features", "labels", "all"):
        raise ValueError(f"--targets must be features, labels or all, got {targets!r}.")
    run = open_run(store)
    _refuse_existing_table(store, "probe", overwrite=overwrite)
    wanted = {}
    if targets in ("features", "all"):
        wanted.update(final_feature_targets(run, metrics=_split(metrics)))
    if targets in ("labels", "all") and (targets == "labels" or run.attrs.get("class_labels") is not None):
        wanted.update(label_targets(run))
    frame = probe_table(run, targets=wanted, layers=_split(layers), control=control,
                        windows=None if windows is None else _windows(windows),
                        cv=cv, n_boot=n_boot, seed=seed)
    write_attribution(store, frame, name="probe", overwrite=overwrite)
    _print_top(frame, title=f"probes → {store}/attribution/probe ({len(frame)} rows; effect: selectivity over the "
                            f"{control} control)", top=top)


@app.command()
@_friendly
def demo(
    out: Path = typer.Option(Path("denoisefeat-demo"), "--out", "-o", help="Folder for demo.zarr and report.html."),
    quick: bool = typer.Option(
        False, "--quick", help="A smaller study: about 3 minutes on 2 CPU cores (default: about 5)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous demo in OUT."),
) -> None:
    """The whole study on the embedded toy model: trajectory, bands, features, probes, ablation, report."""
    from rich.markup import escape

    from denoisefeat.demo import FULL, QUICK, run_demo

    settings = QUICK if quick else FULL
    console.print(f"denoisefeat demo: {settings.samples} toy-model samples × {settings.steps} steps, ablation of "
                  f"{settings.ablation_samples} samples × {settings.windows} step windows → {out}", highlight=False)
    stages = {"trace": "1/5 generating and recording the UNet blocks", "features": "2/5 per-step features and bands",
              "probes": "3/5 linear probes", "ablation": "4/5 ablation scan", "report": "5/5 HTML report"}
    summary = run_demo(out, quick=quick, overwrite=overwrite, progress=True,
                       on_stage=lambda name: console.print(f"[bold]{stages[name]}[/]"))
    timing = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in summary.seconds.items())
    Console(soft_wrap=True).print(escape(summary.text()), highlight=False)
    console.print(f"time: {timing}", highlight=False)


@toy_app.command("train")
@_friendly
def toy_train(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, logs, config (resumed if it exists)."),
    recipe_name: str = typer.Option(
        None, "--recipe", help="Named recipe, v2 or v3 (toy/train.py RECIPES; default: the shipped weights')."),
    iterations: int = typer.Option(None, "--iterations", help="Optimizer steps (default: the recipe's)."),
    seed: int = typer.Option(0, "--seed", help="Seeds weights, data and noise."),
    threads: int = typer.Option(2, "--threads", help="torch threads."),
    until: int = typer.Option(None, "--until", help="Stop after this iteration (resume later)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if OUT has a checkpoint."),
    export_to: Path = typer.Option(None, "--export", help="After training, write the pipeline folder here."),
) -> None:
    """Train the toy model on DiffShapes from a seed (CPU, resumable); the recipes are in denoisefeat/toy/train.py."""
    from denoisefeat.toy.train import DEFAULT_RECIPE, export, recipe, train

    lengths = {} if iterations is None else {"iterations": iterations}
    config = recipe(recipe_name or DEFAULT_RECIPE, seed=seed, threads=threads, **lengths)
    checkpoint = train(config, out, resume=not no_resume, progress=True, until=until)
    console.print(f"checkpoint: {checkpoint}", markup=False)
    if export_to is not None:
        console.print(f"exported: {export(out, export_to)}", markup=False)


@toy_app.command("evaluate")
@_friendly
def toy_evaluate(
    model: str = typer.Option("toy", "--model", help="'toy' (the shipped model) or a pipeline folder."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Evaluate a training run folder's latest checkpoint."),
    per_condition: int = typer.Option(2, "--samples-per-condition", help="Samples for each of the 120 conditions."),
    steps: int = typer.Option(50, "--steps", help="DDIM steps."),
    guidance: float = typer.Option(
        None, "--guidance", help="Classifier-free guidance scale (default: the model's, 1.5)."),
    eta: float = typer.Option(0.0, "--eta", help="DDIM eta (0: deterministic DDIM, as the pipeline samples)."),
    seed: int = typer.Option(0, "--seed"),
    grid: Path = typer.Option(None, "--grid", help="Write a PNG grid of the first sample of every condition."),
    json_out: Path = typer.Option(None, "--json", help="Write the scores as JSON."),
    strict: bool = typer.Option(False, "--strict", help="Exit with status 1 if a gate target is missed."),
) -> None:
    """Quality gate: an independent classifier scores generated samples against their conditioning."""
    import json

    import numpy as np
    import torch

    from denoisefeat.toy.diffshapes import NUM_CONDITIONS
    from denoisefeat.toy.evaluate import (
        GATE,
        confusion_matrices,
        evaluate_samples,
        load_classifier,
        sample_toy,
        save_grid,
    )

    if checkpoint is not None:
        from denoisefeat.toy.train import TrainConfig, build_sampling_scheduler, latest_checkpoint, load_checkpoint_unet

        folder = latest_checkpoint(checkpoint)
        if folder is None:
            raise FileNotFoundError(f"{checkpoint} has no training checkpoint")
        unet = load_checkpoint_unet(folder)
        state = json.loads((folder / "state.json").read_text())
        scheduler = build_sampling_scheduler(TrainConfig.from_json(state["config"]))
        source = str(folder)
    else:
        from denoisefeat.models import load_pipeline

        pipe = load_pipeline(model, dtype=torch.float32)
        unet, scheduler, source = pipe.unet, pipe.scheduler, model
        if guidance is None:
            guidance = pipe.config.default_guidance_scale
    if guidance is None:
        from denoisefeat.toy.train import DEFAULT_GUIDANCE_SCALE

        guidance = DEFAULT_GUIDANCE_SCALE
    labels = np.repeat(np.arange(NUM_CONDITIONS), per_condition)
    with console.status(f"sampling {len(labels)} images × {steps} steps"):
        images = sample_toy(unet, scheduler, labels, steps=steps, guidance_scale=guidance, eta=eta, seed=seed)
    classifier = load_classifier()
    scores = evaluate_samples(images, labels, classifier)
    confusion = confusion_matrices(images, labels, classifier)
    from rich.markup import escape

    table = Table(title=f"toy model quality gate: {escape(str(source))}", title_justify="left")
    for column in ("attribute", "accuracy", "target", ""):
        table.add_column(column)
    for name, target in GATE.items():
        ok = scores[name] >= target
        table.add_row(name, f"{scores[name]:.3f}", f"≥ {target:.2f}", "[green]pass[/]" if ok else "[red]below[/]")
    table.add_row("joint", f"{scores['joint']:.3f}", "", "")
    Console().print(table)
    Console().print(_texture_confusion_table(confusion["texture"]))
    if grid is not None:
        save_grid(images[::per_condition], grid, columns=24)
        console.print(f"grid: {grid}", markup=False)
    if json_out is not None:
        record = {"source": source, "samples": len(labels), "steps": steps, "guidance_scale": guidance, "eta": eta,
                  "seed": seed, **scores, "confusion": {name: matrix.tolist() for name, matrix in confusion.items()}}
        json_out.write_text(json.dumps(record, indent=2) + "\n")
    if strict and any(scores[name] < target for name, target in GATE.items()):
        raise typer.Exit(code=1)


def _texture_confusion_table(matrix) -> Table:
    """Rows: the texture the samples were conditioned on; columns: what the gate classifier reads."""
    from denoisefeat.toy.diffshapes import TEXTURES

    table = Table(title="texture: conditioned (rows) vs classified (columns)", title_justify="left")
    table.add_column("")
    for name in TEXTURES:
        table.add_column(name, justify="right")
    for name, row in zip(TEXTURES, matrix):
        table.add_row(name, *(str(int(count)) for count in row))
    return table


@app.command()
@_friendly
def report(
    store: Path = typer.Argument(..., help="A denoisefeat zarr store."),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML file to write (self-contained, opens offline)."),
    title: str = typer.Option(None, "--title", help="Report title (default: from the run)."),
    static: Path = typer.Option(None, "--static", help="Also export every figure to this folder (needs .[static])."),
    formats: str = typer.Option("png", "--formats", help="Static formats, comma-separated: png,svg,pdf."),
    max_mb: float = typer.Option(25.0, "--max-mb", help="Most MiB the HTML may weigh: pictures shrink to fit."),
) -> None:
    """Write one self-contained HTML report with every figure of what the store holds."""
    from denoisefeat.viz.report import build_report

    with console.status("building the report"):
        path = build_report(store, out, title=title, static_dir=static, max_mb=max_mb,
                            static_formats=tuple(f.strip() for f in formats.split(",") if f.strip()))
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)", markup=False, highlight=False)



@app.command()
@_friendly
def view(
    store: Path = typer.Argument(..., help="A denoisefeat zarr store."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (default: this machine only)."),
    port: int = typer.Option(8050, "--port", help="TCP port."),
) -> None:
    """Browse a whole store in a local web app (read-only; needs the viewer extra: Dash)."""
    import importlib.util

    from denoisefeat.store import open_run

    run = open_run(store, allow_incomplete=True)  # refused here, with the same messages as every command
    if importlib.util.find_spec("dash") is None:
        _error("denoisefeat view needs Dash: pip install 'denoisefeat[viewer]'")
        raise typer.Exit(code=2)
    from denoisefeat.viewer import is_loopback, serve

    if not is_loopback(host):
        console.print(f"warning: {host} is not loopback: anyone who can reach it can read this store",
                      markup=False, highlight=False)
    console.print(f"viewing {run.path} at http://{host}:{port}/ (Ctrl-C to stop)", markup=False, highlight=False)
    serve(run, host=host, port=port)


@app.command()
@_friendly
@_SCAN_RUN_OPTIONS
def facts(
    model: str = typer.Argument(..., help="toy, tiny-*, a save_pretrained folder or a hub id."),
    out: Path = typer.Option(Path("denoisefeat-facts"), "--out", "-o", help="Folder for facts.zarr and facts.html."),
    n_boot: int = _N_BOOT,
    device: str = _DEVICE,
    fp16: bool = _FP16,
    overwrite: bool = _OVERWRITE,
    run: dict = None,
) -> None:
    """Measure the field's four known facts on MODEL and write a report with a "Known facts" section."""
    import html

    from denoisefeat.analyses.facts import known_facts
    from denoisefeat.viz.facts import fact_sentences
    from denoisefeat.viz.report import build_report

    pipe = _scan_pipe(model, device, fp16)
    out.mkdir(parents=True, exist_ok=True)
    with console.status("measuring the known facts (trace, band SNR, step similarity, skip spectra, perturbations)"):
        result = known_facts(pipe, **run, n_boot=n_boot, store=out / "facts.zarr", overwrite=overwrite, model_id=model)
    with console.status("building the report"):
        path = build_report(result.run, out / "facts.html", title=f"denoisefeat known facts: {model}", facts=result)
    plain = Console(soft_wrap=True)
    for key, sentence in fact_sentences(result).items():
        plain.print(f"{key}: {html.unescape(sentence)}", markup=False, highlight=False)
    timing = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.seconds.items())
    console.print(f"wrote {path}; time: {timing}", markup=False, highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
