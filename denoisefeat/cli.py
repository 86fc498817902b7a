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


if __name__ == "__main__":  # pragma: no cover
    app()
