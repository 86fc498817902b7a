"""The ``denoisefeat`` command line (typer + rich).

Errors the user can fix (a bad model name, a store that exists, a wrong number of seeds…) print
one line and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no notes about optional image backends

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


def _friendly(func):
    """Turn the errors a user can fix into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ValueError, KeyError, TypeError, FileNotFoundError, OSError) as error:
            if _DEBUG["on"]:
                raise
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


@app.command()
@_friendly
def extract(
    model: str = typer.Argument(..., help="Built-in name ('toy', 'tiny-sd', …), a save_pretrained folder, or a Hub id."),
    out: Path = typer.Option(..., "--out", "-o", help="The zarr store to write (e.g. run.zarr)."),
    samples: int = typer.Option(None, "--samples", "-n", help="Number of samples (default: one per prompt/label)."),
    steps: int = typer.Option(50, "--steps", "-s", help="Inference steps."),
    seed: int = typer.Option(0, "--seed", help="Sample i uses seed + i."),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="Prompt (repeat the option for several)."),
    label: list[int] = typer.Option(None, "--label", "-l", help="Class label (repeat for several)."),
    scheduler: str = typer.Option(None, "--scheduler", help="ddim, ddpm, euler, heun, dpm++, unipc, flow-euler."),
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale (default: the pipeline's)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Samples per batch (and per store chunk)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps …"),
    fp16: bool = typer.Option(False, "--fp16", help="Run the model in float16."),
    resume: bool = typer.Option(False, "--resume", help="Complete a half-written store made with the same settings."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing denoisefeat store."),
    record: list[str] = typer.Option(
        None, "--record", "-r",
        help="LAYER=REDUCER[,REDUCER] to record (repeatable; globs allowed), e.g. 'mid_block=channel_mean'.",
    ),
    backend: str = typer.Option("torch", "--backend", help="Hook backend for --record: torch or nnsight."),
) -> None:
    """Run MODEL's denoising loop and store every step (x_t, x̂0, decoded image) in a zarr store."""
    import torch

    from denoisefeat.models import load_pipeline
    from denoisefeat.trajectory import trace

    pipe = load_pipeline(model, device=device, dtype=torch.float16 if fp16 else None)
    run = trace(
        pipe, samples=samples, prompts=prompt or None, class_labels=label or None, seed=seed, steps=steps,
        scheduler=scheduler, guidance_scale=guidance, batch_size=batch_size, store=out, resume=resume,
        overwrite=overwrite, model_id=model, progress=True, record=parse_record(record), backend=backend,
    )
    console.print(f"wrote {run.path}")
    _print_info(run)


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


def _print_info(run) -> None:
    attrs = run.attrs
    done = run.store.completed()
    table = Table(title=str(run.path or "in-memory run"), show_header=False, title_justify="left")
    table.add_row("model", f"{attrs['model_id']} ({attrs['pipeline_class']}, {attrs['denoiser_class']})")
    table.add_row("scheduler", f"{attrs['scheduler_class']}, prediction {attrs['prediction_type']}")
    table.add_row("samples", f"{run.store.n_samples} ({int(done.sum())} complete)")
    table.add_row("loop steps", f"{run.store.n_steps} ({attrs['steps']} inference steps)")
    table.add_row("guidance", str(attrs["guidance_scale"]))
    conditions = attrs.get("prompts") or attrs.get("class_labels")
    if conditions:
        shown = ", ".join(map(str, conditions[:4])) + (" …" if len(conditions) > 4 else "")
        table.add_row("conditions", shown)
    group = run.store.group
    for name in ("xt", "x0", "images", "final"):
        if name in group:
            array = group[name]
            dims = ", ".join(f"{d}={s}" for d, s in zip(array.metadata.dimension_names, array.shape, strict=True))
            table.add_row(name, f"({dims}) {array.dtype}")
    for layer in run.layers():
        table.add_row("acts", layer)
    Console().print(table)


@app.command()
@_friendly
def analyze(
    store: Path = typer.Argument(..., help="A denoisefeat zarr store (from `denoisefeat extract`)."),
    metrics: str = typer.Option(None, "--metrics", help="Metrics to compute, comma-separated (default: all)."),
    samples: str = typer.Option(None, "--samples", help="A:B, only these samples (whole store chunks; a task's share)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute features that are already stored."),
) -> None:
    """Compute per-step features into STORE's features/ group, then print when each feature emerges."""
    from rich.markup import escape

    from denoisefeat.features import features
    from denoisefeat.temporal import emergence_order, profiles

    names = None if metrics is None else [m.strip() for m in metrics.split(",") if m.strip()]
    feats = features(store, metrics=names, samples=_sample_range(samples), overwrite=overwrite, progress=True)
    prof = profiles(feats)
    n_steps = feats.sizes["step"]
    table = Table(title=f"feature emergence: {store} ({feats.sizes['sample']} samples × {n_steps} steps; "
                        f"median over samples [{prof.attrs['ci']:.0%} CI])", title_justify="left")
    for column in ("profile", "emergence step", "t/T", "stabilisation step", "t/T"):
        table.add_column(column, justify="left" if column == "profile" else "right")

    def cell(measure, name):
        low, mid, high = (float(prof[f"{measure}_summary"].sel(profile=name, stat=s)) for s in
                          ("median_low", "median", "median_high"))
        return f"{mid:g} [{low:g}, {high:g}]", f"{float(prof[f'{measure}_t_summary'].sel(profile=name, stat='median')):.2f}"

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


if __name__ == "__main__":  # pragma: no cover
    app()


@toy_app.command("train")
@_friendly
def toy_train(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, logs, config (resumed if it exists)."),
    iterations: int = typer.Option(None, "--iterations", help="Optimizer steps (default: the recipe's)."),
    seed: int = typer.Option(0, "--seed", help="Seeds weights, data and noise."),
    threads: int = typer.Option(2, "--threads", help="torch threads."),
    until: int = typer.Option(None, "--until", help="Stop after this iteration (resume later)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if OUT has a checkpoint."),
    export_to: Path = typer.Option(None, "--export", help="After training, write the pipeline folder here."),
) -> None:
    """Train the toy model on DiffShapes from a seed (CPU, resumable); the recipe is denoisefeat/toy/train.py."""
    import dataclasses

    from denoisefeat.toy.train import TrainConfig, export, train

    config = TrainConfig(seed=seed, threads=threads)
    if iterations is not None:
        config = dataclasses.replace(config, iterations=iterations)
    checkpoint = train(config, out, resume=not no_resume, progress=True, until=until)
    console.print(f"checkpoint: {checkpoint}")
    if export_to is not None:
        console.print(f"exported: {export(out, export_to)}")


@toy_app.command("evaluate")
@_friendly
def toy_evaluate(
    model: str = typer.Option("toy", "--model", help="'toy' (the shipped model) or a pipeline folder."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Evaluate a training run folder's latest checkpoint."),
    per_condition: int = typer.Option(2, "--samples-per-condition", help="Samples for each of the 120 conditions."),
    steps: int = typer.Option(50, "--steps", help="DDIM steps."),
    guidance: float = typer.Option(3.0, "--guidance", help="Classifier-free guidance scale."),
    eta: float = typer.Option(1.0, "--eta", help="DDIM eta (1: ancestral noise at every step)."),
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
    from denoisefeat.toy.evaluate import GATE, evaluate_samples, load_classifier, sample_toy, save_grid

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
    labels = np.repeat(np.arange(NUM_CONDITIONS), per_condition)
    with console.status(f"sampling {len(labels)} images × {steps} steps"):
        images = sample_toy(unet, scheduler, labels, steps=steps, guidance_scale=guidance, eta=eta, seed=seed)
    scores = evaluate_samples(images, labels, load_classifier())
    table = Table(title=f"toy model quality gate: {source}", title_justify="left")
    for column in ("attribute", "accuracy", "target", ""):
        table.add_column(column)
    for name, target in GATE.items():
        ok = scores[name] >= target
        table.add_row(name, f"{scores[name]:.3f}", f"≥ {target:.2f}", "[green]pass[/]" if ok else "[red]below[/]")
    table.add_row("joint", f"{scores['joint']:.3f}", "", "")
    Console().print(table)
    if grid is not None:
        save_grid(images[::per_condition], grid, columns=24)
        console.print(f"grid: {grid}")
    if json_out is not None:
        record = {"source": source, "samples": len(labels), "steps": steps, "guidance_scale": guidance, "eta": eta,
                  "seed": seed, **scores}
        json_out.write_text(json.dumps(record, indent=2) + "\n")
    if strict and any(scores[name] < target for name, target in GATE.items()):
        raise typer.Exit(code=1)


@app.command()
@_friendly
def report(
    store: Path = typer.Argument(..., help="A denoisefeat zarr store."),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML file to write (self-contained, opens offline)."),
    title: str = typer.Option(None, "--title", help="Report title (default: from the run)."),
    static: Path = typer.Option(None, "--static", help="Also export every figure to this folder (needs .[static])."),
    formats: str = typer.Option("png", "--formats", help="Static formats, comma-separated: png,svg,pdf."),
) -> None:
    """Write one self-contained HTML report with every figure of what the store holds."""
    from denoisefeat.viz.report import build_report

    with console.status("building the report"):
        path = build_report(store, out, title=title, static_dir=static,
                            static_formats=tuple(f.strip() for f in formats.split(",") if f.strip()))
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")

