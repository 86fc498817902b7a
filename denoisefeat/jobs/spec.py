"""Job spec: one TOML file, validated before anything runs or is queued, expanded into a stable task grid.

A spec (see ``examples/*.toml``)::

    [run]                          # what to trace: one store per configuration
    model = "toy"                  # built-in name, save_pretrained folder (relative to the spec) or hub id
    store = "runs/study.zarr"      # relative paths are relative to the spec's folder
    samples = 64
    seed = 0                       # sample i uses seed + i; or a list, one seed per sample
    steps = [20, 50]               # int or list          } configurations:
    schedulers = ["ddim", "euler"] # str or list          } schedulers x steps x guidance,
    guidance = 1.0                 # number or list       } each written to its own store
    labels = [0, 27, 54]           # or prompts = [...]: cycled, sample i gets labels[i % len(labels)]
    batch_size = 8                 # samples per store chunk: the unit a task owns
    chunks_per_task = 1            # sample chunks per extraction / feature task
    record = { "mid_block" = "channel_mean", "up_blocks.*" = ["spatial_energy"] }
    device = "auto"                # "auto" (cuda when there is one), "cpu", "cuda", "cuda:1" ...

    [features]                     # per-step features of every store (denoisefeat.features)
    metrics = ["edge_density", "ssim"]

    [ablation]                     # layer x step-window x method ablation scan (denoisefeat.analyses)
    layers = ["mid_block", "up_blocks.1"]
    windows = 4                    # 4 equal windows, or [[0, 5], [5, 20]]
    methods = ["zero", "mean"]
    features = ["edges", "color"]
    samples = 16                   # the first 16 samples of [run] (same seeds and labels)

    [cluster]
    scheduler = "pbs"              # or "slurm"
    walltime = "02:00:00"
    cpus = 4
    mem = "16gb"
    gpus = 1
    queue = "gpu"                  # PBS queue / SLURM partition ("partition" is accepted too)
    account = "proj123"
    max_parallel = 8               # array elements running at once
    conda_env = "denoisefeat"      # or venv = "/path/to/.venv"
    setup = ["module load cuda/12.1"]
    extra_header = ["#PBS -l place=scatter"]

Validation (:func:`parse_spec`) refuses unknown sections and keys (naming the close matches), wrong
types, unknown schedulers, reducers, metrics, ablation methods and features, and malformed cluster
resources; with ``check_model=True`` (:func:`load_spec` default) it also loads the model and checks
the layers (:func:`denoisefeat.hooks.resolve_layers`) and the conditions against it.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "AblationSpec",
    "ClusterSpec",
    "Config",
    "FeaturesSpec",
    "JobSpec",
    "SpecError",
    "Task",
    "check_spec",
    "load_spec",
    "parse_spec",
    "task_grid",
]

#: Allowed keys of each section and their TOML types.
_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "run": {
        "model": (str,), "store": (str,), "samples": (int,), "seed": (int, list), "steps": (int, list),
        "schedulers": (str, list), "guidance": (int, float, list), "labels": (int, list),
        "prompts": (str, list), "negative_prompt": (str,), "batch_size": (int,), "chunks_per_task": (int,),
        "record": (dict,), "keep": (list,), "store_dtype": (str,), "device": (str,), "dtype": (str,),
    },
    "features": {"metrics": (list,), "wavelet": (str,), "batch_size": (int,)},
    "ablation": {
        "layers": (str, list), "windows": (int, list), "methods": (str, list), "features": (str, list),
        "samples": (int,), "batch_size": (int,),
    },
    "cluster": {
        "scheduler": (str,), "walltime": (str,), "cpus": (int,), "mem": (str,), "gpus": (int,),
        "queue": (str,), "partition": (str,), "account": (str,), "max_parallel": (int,),
        "conda_env": (str,), "venv": (str,), "setup": (list,), "extra_header": (list,),
    },
}
_REQUIRED = {"run": ("model", "store", "samples", "steps")}
_CLUSTER_SCHEDULERS = ("pbs", "slurm")
_KEEP = ("xt", "x0", "images")
_STORE_DTYPES = ("float32", "float16")
_DTYPES = ("float32", "float16", "bfloat16")
_WALLTIME = re.compile(r"^(\d+-)?\d+:\d{2}:\d{2}$")
_MEM = re.compile(r"^\d+(\.\d+)?\s*([kKmMgGtT][bB]?)?$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SpecError(ValueError):
    """A job spec that cannot run: the message names the section and key, and the valid choices."""


@dataclass(frozen=True)
class Config:
    """One configuration of the run (scheduler x steps x guidance); each has its own store.

    Attributes
    ----------
    name : str
        Readable, stable id (``"ddim-50"``, ``"euler-20-g7.5"``; ``"default"`` for the model's own scheduler).
    scheduler : str or None
        Short scheduler name (:data:`denoisefeat.schedulers.SCHEDULERS`), ``None`` for the pipeline's own.
    steps : int
    guidance : float or None
        Classifier-free guidance scale, ``None`` for the pipeline's default.
    store : Path
        The zarr store this configuration writes.
    """

    name: str
    scheduler: str | None
    steps: int
    guidance: float | None
    store: Path


@dataclass(frozen=True)
class FeaturesSpec:
    """``[features]``: arguments of :func:`denoisefeat.features.features`."""

    metrics: tuple[str, ...] | None = None
    wavelet: str = "haar"
    batch_size: int = 128


@dataclass(frozen=True)
class AblationSpec:
    """``[ablation]``: arguments of :func:`denoisefeat.analyses.ablation.ablation_scan`."""

    layers: tuple[str, ...]
    windows: int | tuple[tuple[int, int], ...]
    methods: tuple[str, ...]
    features: tuple[str, ...]
    samples: int
    batch_size: int = 8


@dataclass(frozen=True)
class ClusterSpec:
    """``[cluster]``: scheduler, resources and environment of the array job."""

    scheduler: str = "slurm"
    walltime: str | None = None
    cpus: int | None = None
    mem: str | None = None
    gpus: int | None = None
    queue: str | None = None
    account: str | None = None
    max_parallel: int | None = None
    conda_env: str | None = None
    venv: str | None = None
    setup: tuple[str, ...] = ()
    extra_header: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec (see the module docstring for the TOML layout).

    Attributes
    ----------
    path : Path
        The spec file (absolute).
    jobs_dir : Path
        Markers, locks, logs, scripts and job ids: ``<store stem>.jobs/`` beside the ``[run]`` store.
    configs : tuple of Config
        In spec order (schedulers, then steps, then guidance).
    """

    path: Path
    model: str
    samples: int
    seeds: tuple[int, ...]
    labels: tuple[int, ...] | None
    prompts: tuple[str, ...] | None
    negative_prompt: str | None
    batch_size: int
    chunks_per_task: int
    record: dict[str, tuple[str, ...]] | None
    keep: tuple[str, ...]
    store_dtype: str
    device: str
    dtype: str | None
    configs: tuple[Config, ...]
    jobs_dir: Path
    features: FeaturesSpec | None = None
    ablation: AblationSpec | None = None
    cluster: ClusterSpec = field(default_factory=ClusterSpec)

    def config(self, name: str) -> Config:
        """The configuration called ``name``."""
        for config in self.configs:
            if config.name == name:
                return config
        raise KeyError(f"No configuration {name!r}; the spec has {', '.join(c.name for c in self.configs)}.")


@dataclass(frozen=True)
class Task:
    """One unit of work of a job array.

    Attributes
    ----------
    index : int
        Position in :func:`task_grid` (the array index).
    id : str
        Stable readable name, also the stem of its marker and lock files.
    kind : {"extract", "features", "ablation"}
    stage : int
        0: extraction and ablation (independent); 1: features (need their extraction chunks).
    config : Config
    samples : (int, int) or None
        Half-open sample range (whole store chunks) of extraction and feature tasks.
    layer, method : str or None
        Ablation tasks: a layer name or glob of ``[ablation].layers``, an ablation method.
    window : (int, int) or None
        Ablation tasks with explicit windows: the half-open step window.
    window_part : (int, int) or None
        Ablation tasks with ``windows = N``: ``(i, N)``, the i-th of N equal windows of the loop.
    """

    index: int
    id: str
    kind: str
    stage: int
    config: Config
    samples: tuple[int, int] | None = None
    layer: str | None = None
    method: str | None = None
    window: tuple[int, int] | None = None
    window_part: tuple[int, int] | None = None


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------
def _choices(name: str, choices) -> str:
    choices = list(choices)
    near = difflib.get_close_matches(name, choices, n=3)
    hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
    return f"{hint} Valid: {', '.join(map(str, choices))}."


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return " or ".join(names[t] for t in types)


def _check_types(section: str, table) -> dict:
    if not isinstance(table, dict):
        raise SpecError(f"[{section}] must be a table, got {type(table).__name__}.")
    allowed = _KEYS[section]
    for key, value in table.items():
        if key not in allowed:
            raise SpecError(f"Unknown key {key!r} in [{section}].{_choices(key, allowed)}")
        types = allowed[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise SpecError(f"[{section}].{key} must be {_type_name(types)}, got {type(value).__name__} ({value!r}).")
    for key in _REQUIRED.get(section, ()):
        if key not in table:
            raise SpecError(f"[{section}].{key} is required.")
    return table


def _as_list(section: str, key: str, value, item: tuple[type, ...]) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SpecError(f"[{section}].{key} is empty.")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, item):
            raise SpecError(f"[{section}].{key}: every entry must be {_type_name(item)}, got {v!r}.")
    return values


def _positive(section: str, key: str, value, *, minimum: int = 1) -> int:
    if value < minimum:
        raise SpecError(f"[{section}].{key} must be >= {minimum}, got {value}.")
    return value


def _slug(text: str) -> str:
    return _SAFE.sub("_", text.replace("*", "x").replace("+", "p"))


def _model_name_ok(model: str, base: Path) -> None:
    from denoisefeat.models import _HUB_ID, BUILTIN_MODELS

    if model in BUILTIN_MODELS or (base / model).expanduser().exists() or Path(model).expanduser().exists():
        return
    if _HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        return
    raise SpecError(f"[run].model: unknown model {model!r}: not a built-in, an existing folder or a hub id."
                    f"{_choices(model, BUILTIN_MODELS)}")


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
def _parse_run(run: dict, base: Path) -> dict:
    from denoisefeat.hooks import get_reducer
    from denoisefeat.schedulers import SCHEDULERS

    _model_name_ok(run["model"], base)
    samples = _positive("run", "samples", run["samples"])
    batch_size = _positive("run", "batch_size", run.get("batch_size", 8))
    seed = run.get("seed", 0)
    seeds = tuple(seed + i for i in range(samples)) if isinstance(seed, int) else tuple(
        _as_list("run", "seed", seed, (int,)))
    if len(seeds) != samples:
        raise SpecError(f"[run].seed has {len(seeds)} seeds for {samples} samples: give one per sample, or one int.")
    if "labels" in run and "prompts" in run:
        raise SpecError("[run]: give labels or prompts, not both.")
    labels = prompts = None
    if "labels" in run:
        given = _as_list("run", "labels", run["labels"], (int,))
        labels = tuple(given[i % len(given)] for i in range(samples))
    if "prompts" in run:
        given = _as_list("run", "prompts", run["prompts"], (str,))
        prompts = tuple(given[i % len(given)] for i in range(samples))
    steps = _as_list("run", "steps", run["steps"], (int,))
    schedulers = _as_list("run", "schedulers", run["schedulers"], (str,)) if "schedulers" in run else [None]
    guidance = _as_list("run", "guidance", run["guidance"], (int, float)) if "guidance" in run else [None]
    for s in steps:
        _positive("run", "steps", s)
    for name in schedulers:
        if name is not None and name.lower() not in SCHEDULERS:
            raise SpecError(f"[run].schedulers: unknown scheduler {name!r}.{_choices(name, SCHEDULERS)}")
    for g in guidance:
        if g is not None and g < 0:
            raise SpecError(f"[run].guidance must be >= 0, got {g}.")
    for key, values in (("steps", steps), ("schedulers", schedulers), ("guidance", guidance)):
        if len(set(values)) != len(values):
            raise SpecError(f"[run].{key} lists a value twice: {values}.")
    record = None
    if "record" in run:
        record = {}
        for layer, reducers in run["record"].items():
            if isinstance(reducers, bool) or not isinstance(reducers, (str, list)):
                raise SpecError(f"[run].record.{layer!r} must be a reducer name or a list of them, got {reducers!r}.")
            names = _as_list("run", f"record.{layer!r}", reducers, (str,))
            for name in names:
                try:
                    get_reducer(name)
                except ValueError as err:
                    raise SpecError(f"[run].record.{layer!r}: {err}") from None
            record[layer] = tuple(names)
    keep = tuple(_as_list("run", "keep", run.get("keep", list(_KEEP)), (str,)))
    for name in keep:
        if name not in _KEEP:
            raise SpecError(f"[run].keep: unknown array {name!r}.{_choices(name, _KEEP)}")
    store_dtype = run.get("store_dtype", "float32")
    if store_dtype not in _STORE_DTYPES:
        raise SpecError(f"[run].store_dtype: unknown dtype {store_dtype!r}.{_choices(store_dtype, _STORE_DTYPES)}")
    dtype = run.get("dtype")
    if dtype is not None and dtype not in _DTYPES:
        raise SpecError(f"[run].dtype: unknown dtype {dtype!r}.{_choices(dtype, _DTYPES)}")
    device = run.get("device", "auto")
    if not re.match(r"^(auto|cpu|mps|cuda(:\d+)?)$", device):
        raise SpecError(f"[run].device must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N', got {device!r}.")
    return dict(
        model=run["model"], samples=samples, seeds=seeds, labels=labels, prompts=prompts,
        negative_prompt=run.get("negative_prompt"), batch_size=batch_size,
        chunks_per_task=_positive("run", "chunks_per_task", run.get("chunks_per_task", 1)), record=record,
        keep=keep, store_dtype=store_dtype, device=device, dtype=dtype,
        grid=(schedulers, steps, guidance),
    )


def _configs(store: Path, schedulers, steps, guidance) -> tuple[Config, ...]:
    configs = []
    for scheduler in schedulers:
        for n in steps:
            for g in guidance:
                name = f"{(scheduler or 'default').lower()}-{n}"
                if len(guidance) > 1:
                    name += f"-g{g:g}"
                configs.append(Config(name=_slug(name), scheduler=scheduler and scheduler.lower(), steps=n,
                                      guidance=None if g is None else float(g), store=store))
    if len(configs) > 1:
        configs = [Config(c.name, c.scheduler, c.steps, c.guidance,
                          store.with_name(f"{store.stem}-{c.name}{store.suffix}")) for c in configs]
    return tuple(configs)


def _parse_features(table: dict) -> FeaturesSpec:
    from denoisefeat.metrics import METRICS

    metrics = None
    if "metrics" in table:
        metrics = tuple(table["metrics"])
        for name in metrics:
            if not isinstance(name, str) or name not in METRICS:
                raise SpecError(f"[features].metrics: unknown metric {name!r}.{_choices(str(name), METRICS)}")
            if METRICS[name].needs_reference in ("mask", "edges"):
                raise SpecError(f"[features].metrics: {name!r} needs ground truth, which generated images do not have.")
    wavelet = table.get("wavelet", "haar")
    import pywt

    if wavelet not in pywt.wavelist(kind="discrete"):
        raise SpecError(f"[features].wavelet: unknown wavelet {wavelet!r}."
                        f"{_choices(wavelet, pywt.wavelist(kind='discrete'))}")
    return FeaturesSpec(metrics=metrics, wavelet=wavelet,
                        batch_size=_positive("features", "batch_size", table.get("batch_size", 128)))


def _parse_ablation(table: dict, *, n_samples: int, steps: list[int]) -> AblationSpec:
    from denoisefeat.analyses.ablation import ABLATION_METHODS, resolve_features

    for key in ("layers", "windows"):
        if key not in table:
            raise SpecError(f"[ablation].{key} is required.")
    layers = tuple(_as_list("ablation", "layers", table["layers"], (str,)))
    if len(set(layers)) != len(layers):
        raise SpecError(f"[ablation].layers lists a layer twice: {list(layers)}.")
    windows = table["windows"]
    if isinstance(windows, int):
        if not 1 <= windows <= min(steps):
            raise SpecError(f"[ablation].windows must be between 1 and the fewest steps ({min(steps)}), got {windows}.")
    else:
        pairs = []
        for pair in windows:
            if (not isinstance(pair, list) or len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int)
                                                                    for v in pair)
                    or not 0 <= pair[0] < pair[1] <= min(steps)):
                raise SpecError(f"[ablation].windows: {pair!r} is not a [start, stop] pair with "
                                f"0 <= start < stop <= steps ({min(steps)}).")
            pairs.append((pair[0], pair[1]))
        if not pairs or len(set(pairs)) != len(pairs):
            raise SpecError(f"[ablation].windows must list distinct [start, stop] pairs, got {windows!r}.")
        windows = tuple(pairs)
    methods = tuple(_as_list("ablation", "methods", table.get("methods", "zero"), (str,)))
    for m in methods:
        if m not in ABLATION_METHODS:
            raise SpecError(f"[ablation].methods: unknown method {m!r}.{_choices(m, ABLATION_METHODS)}")
    features = tuple(_as_list("ablation", "features", table.get("features", ["edges", "texture", "shape", "color"]),
                              (str,)))
    try:
        resolve_features(list(features))
    except (KeyError, ValueError) as err:
        raise SpecError(f"[ablation].features: {err.args[0] if err.args else err}") from None
    samples = table.get("samples", min(n_samples, 8))
    if not 2 <= samples <= n_samples:
        raise SpecError(f"[ablation].samples must be between 2 and [run].samples ({n_samples}), got {samples}.")
    return AblationSpec(layers=layers, windows=windows, methods=methods, features=features, samples=samples,
                        batch_size=_positive("ablation", "batch_size", table.get("batch_size", 8)))


def _parse_cluster(table: dict) -> ClusterSpec:
    scheduler = table.get("scheduler", "slurm")
    if scheduler not in _CLUSTER_SCHEDULERS:
        raise SpecError(f"[cluster].scheduler: unknown scheduler {scheduler!r}."
                        f"{_choices(scheduler, _CLUSTER_SCHEDULERS)}")
    if "walltime" in table and not _WALLTIME.match(table["walltime"]):
        raise SpecError(f"[cluster].walltime must look like HH:MM:SS (or D-HH:MM:SS), got {table['walltime']!r}.")
    if "mem" in table and not _MEM.match(table["mem"]):
        raise SpecError(f"[cluster].mem must look like '16gb', '4G' or '512mb', got {table['mem']!r}.")
    for key in ("cpus", "max_parallel"):
        if key in table:
            _positive("cluster", key, table[key])
    if "gpus" in table:
        _positive("cluster", "gpus", table["gpus"], minimum=0)
    if "queue" in table and "partition" in table:
        raise SpecError("[cluster]: give queue or partition (the same thing), not both.")
    if "conda_env" in table and "venv" in table:
        raise SpecError("[cluster]: give conda_env or venv, not both.")
    for key in ("setup", "extra_header"):
        _as_list("cluster", key, table.get(key, [""]), (str,))
    return ClusterSpec(
        scheduler=scheduler, walltime=table.get("walltime"), cpus=table.get("cpus"), mem=table.get("mem"),
        gpus=table.get("gpus"), queue=table.get("queue", table.get("partition")), account=table.get("account"),
        max_parallel=table.get("max_parallel"), conda_env=table.get("conda_env"), venv=table.get("venv"),
        setup=tuple(table.get("setup", ())), extra_header=tuple(table.get("extra_header", ())),
    )


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def parse_spec(data: Mapping, *, path: str | Path = "spec.toml", check_model: bool = True) -> JobSpec:
    """Validate a parsed TOML document and return a :class:`JobSpec`.

    Parameters
    ----------
    data : mapping
        The TOML document.
    path : str or path
        Where the spec lives: relative store paths and model folders are resolved against its folder.
    check_model : bool
        Also load the model and check layers and conditions against it (:func:`check_spec`).

    Returns
    -------
    JobSpec

    Raises
    ------
    SpecError
        Unknown sections or keys (with close matches), wrong types, bad values, unknown model,
        schedulers, reducers, metrics, ablation methods or features; with ``check_model``, unknown
        layers or conditions the model does not take.
    """
    for section in data:
        if section not in _KEYS:
            raise SpecError(f"Unknown section [{section}].{_choices(section, _KEYS)}")
    if "run" not in data:
        raise SpecError("The spec has no [run] section (model, store, samples, steps are required).")
    tables = {name: _check_types(name, data[name]) for name in _KEYS if name in data}
    path = Path(path).expanduser().resolve()
    base = path.parent
    run = _parse_run(tables["run"], base)
    store = Path(tables["run"]["store"]).expanduser()
    store = (store if store.is_absolute() else base / store).resolve()
    if store.suffix != ".zarr":
        raise SpecError(f"[run].store must end in .zarr, got {tables['run']['store']!r}.")
    schedulers, steps, guidance = run.pop("grid")
    model = run.pop("model")
    if not Path(model).is_absolute() and (base / model).exists():
        model = str(base / model)
    spec = JobSpec(
        path=path, model=model, **run, configs=_configs(store, schedulers, steps, guidance),
        jobs_dir=store.with_name(f"{store.stem}.jobs"),
        features=_parse_features(tables["features"]) if "features" in tables else None,
        ablation=(_parse_ablation(tables["ablation"], n_samples=run["samples"], steps=steps)
                  if "ablation" in tables else None),
        cluster=_parse_cluster(tables.get("cluster", {})),
    )
    task_grid(spec)  # ids must be unique
    if check_model:
        from denoisefeat.models import ModelSourceError, load_pipeline

        try:
            pipe = load_pipeline(spec.model)
        except ModelSourceError as err:
            raise SpecError(f"[run].model: {err}") from err
        check_spec(spec, pipe)
    return spec


def check_spec(spec: JobSpec, pipe) -> None:
    """Check a spec against a loaded pipeline: layers, conditions, schedulers and guidance.

    Parameters
    ----------
    spec : JobSpec
    pipe : diffusers.DiffusionPipeline
        The spec's model, loaded (any device).

    Raises
    ------
    SpecError
        A layer or glob that matches nothing (with the closest module paths), or conditions,
        schedulers or guidance the pipeline refuses (the message of :func:`denoisefeat.trace`).
    """
    from denoisefeat.hooks import UnknownLayerError, resolve_layers
    from denoisefeat.options import RunOptions

    checks = [("[run].record", name) for name in (spec.record or {})]
    checks += [("[ablation].layers", name) for name in (spec.ablation.layers if spec.ablation else ())]
    for where, name in checks:
        try:
            resolve_layers(pipe, name)
        except UnknownLayerError as err:
            raise SpecError(f"{where}: {err.args[0]}") from None
    for config in spec.configs:
        try:
            RunOptions(samples=spec.samples, prompts=spec.prompts, class_labels=spec.labels,
                       negative_prompt=spec.negative_prompt, seed=list(spec.seeds), steps=config.steps,
                       scheduler=config.scheduler, guidance_scale=config.guidance).request(pipe)
        except (ValueError, KeyError) as err:
            raise SpecError(f"[run] configuration {config.name!r}: {err.args[0] if err.args else err}") from None


def load_spec(path: str | Path, *, check_model: bool = True) -> JobSpec:
    """Read and validate a TOML job spec file (see :func:`parse_spec`).

    Raises
    ------
    FileNotFoundError
        No such file.
    SpecError
        Not valid TOML, or an invalid spec.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No job spec at {str(path)!r}.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: not valid TOML: {err}") from err
    return parse_spec(data, path=path, check_model=check_model)


def _chunked(n: int, chunk: int, per_task: int) -> list[tuple[int, int]]:
    step = chunk * per_task
    return [(start, min(n, start + step)) for start in range(0, n, step)]


def task_grid(spec: JobSpec) -> list[Task]:
    """Expand a spec into its tasks, in a deterministic order.

    Returns
    -------
    list of Task
        Stage 0 first: extraction tasks (configurations x sample ranges), then ablation tasks
        (configurations x layers x windows x methods); then stage 1: feature tasks
        (configurations x sample ranges).  ``task.index`` is the position in this list.

    Notes
    -----
    *One store per configuration* (scheduler x steps x guidance): a store holds one sampling
    schedule (its ``timestep`` coordinate, its ``attrs["run"]``), which is what :func:`open_run`,
    the features and the temporal analyses expect; with a single configuration the store is
    ``[run].store`` itself, otherwise ``<stem>-<configuration><suffix>`` beside it.

    An extraction or feature task owns ``chunks_per_task`` whole sample chunks (``batch_size``
    samples each) of its store, so two tasks never write the same zarr chunk.  An ablation task
    runs one ``[ablation].layers`` entry (a glob stays one task) in one window with one method on
    the first ``[ablation].samples`` samples: all of them, because the paired bootstrap CI and
    t-test of a row need every sample.  Ids depend only on the spec, never on the order tasks run.
    """
    extract, ablate, feats = [], [], []
    ranges = _chunked(spec.samples, spec.batch_size, spec.chunks_per_task)
    for config in spec.configs:
        for a, b in ranges:
            extract.append(dict(id=f"extract-{config.name}-s{a}-{b}", kind="extract", stage=0, config=config,
                                samples=(a, b)))
            if spec.features is not None:
                feats.append(dict(id=f"features-{config.name}-s{a}-{b}", kind="features", stage=1, config=config,
                                  samples=(a, b)))
        if spec.ablation is not None:
            abl = spec.ablation
            parts = ([dict(window_part=(i, abl.windows), tag=f"w{i}of{abl.windows}") for i in range(abl.windows)]
                     if isinstance(abl.windows, int) else
                     [dict(window=pair, tag=f"w{pair[0]}-{pair[1]}") for pair in abl.windows])
            for layer in abl.layers:
                for part in parts:
                    for method in abl.methods:
                        extra = {k: v for k, v in part.items() if k != "tag"}
                        ablate.append(dict(id=f"ablation-{config.name}-{_slug(layer)}-{part['tag']}-{method}",
                                           kind="ablation", stage=0, config=config, layer=layer, method=method,
                                           **extra))
    tasks = [Task(index=i, **fields) for i, fields in enumerate(extract + ablate + feats)]
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise SpecError(f"Two tasks would share the id(s) {dupes}: rename the layers or configurations.")
    return tasks
