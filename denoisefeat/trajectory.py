"""Run a pipeline's denoising loop and keep every step: x_t, x̂0 and the decoded image.

denoisefeat runs the loop itself, unrolled as diffusers documents it (denoiser, then
``scheduler.step``), with the pieces of each pipeline family (:mod:`denoisefeat.families`); the loop
of each family reproduces the pipeline's own ``__call__`` (tests compare them) so that what is stored
is what the pipeline makes.  :class:`DenoisingLoop` is that loop, the only one: :func:`trace` and the
scans of :mod:`denoisefeat.analyses` drive it (start from a cached :class:`LoopState`, run with
edits, hand every step to a writer).
Running the loop ourselves is what lets us take x̂0 from the scheduler's own step, split the
classifier-free-guidance batch, and know at every denoiser call which loop step it is.

Conventions
-----------
* ``step`` is the 0-based index of the sampling loop: one per denoiser call of the loop.  Second-order
  schedulers (Heun) call the denoiser twice per ``scheduler.timesteps`` pair; each call is a step, and
  ``timestep``/``sigma`` (coordinates along ``step``) say which point of the schedule it evaluated.
* ``xt[step]`` is the sample the scheduler holds when the denoiser is called at that step (before
  ``scale_model_input``), ``x0[step]`` is the scheduler's x̂0 at that step
  (:func:`denoisefeat.schedulers.predicted_original_sample`), ``images[step]`` is x̂0 in pixel space.
* Every sample has its own ``torch.Generator`` seeded with its seed, for the initial noise and any
  noise the scheduler adds: a sample's trajectory does not depend on the rest of its batch.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from denoisefeat import schedulers
from denoisefeat.families import PipelineFamily, family_of
from denoisefeat.options import RunOptions, TraceRequest
from denoisefeat.progress import progress_bar
from denoisefeat.steps import BRANCHES, StepClock, steps_selection
from denoisefeat.store import (
    COMPRESSORS,
    FAST_COMPRESSORS,
    Run,
    RunMismatchError,
    RunStore,
    StepWriter,
    StoreError,
    acts_path,
)

__all__ = ["DenoisingLoop", "LoopState", "PrefixCache", "trace"]


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
@dataclass
class LoopState:
    """One sample chunk's loop just before the denoiser call of step ``step``: all a run needs to go on.

    Attributes
    ----------
    step : int
        The next loop step.
    x : torch.Tensor
        x_step, the sample the scheduler holds before that call.
    scheduler : diffusers scheduler
        A copy (multistep solvers keep past model outputs; the step index).
    generator_states : list of torch.Tensor
        Each sample's generator state, for the noise still to be drawn (stochastic schedulers).
    """

    step: int
    x: torch.Tensor
    scheduler: object
    generator_states: list[torch.Tensor]


class PrefixCache:
    """Loop states kept before chosen steps of every sample chunk of a run (prefix caching).

    A run edited from step ``k`` on is the unedited run up to step ``k``: started from the unedited
    run's state before ``k``, it saves ``k`` denoiser calls and, with the generators' states
    restored, draws the noise the full run draws (exact for stochastic schedulers too).

    Parameters
    ----------
    steps : iterable of int
        Steps before which to keep the state (step 0, the initial noise, needs none).
    """

    def __init__(self, steps: Collection[int]):
        self.steps = frozenset(int(s) for s in steps if int(s) > 0)
        self._states: dict[tuple[int, int], LoopState] = {}

    def keep(self, samples: slice, state: LoopState) -> None:
        """Store ``state`` as the prefix of the chunk ``samples`` before ``state.step``.

        Parameters
        ----------
        samples : slice
            The chunk's samples.
        state : LoopState
            Its loop before ``state.step``.
        """
        self._states[(samples.start, state.step)] = state

    def state(self, samples: slice, step: int) -> LoopState:
        """The kept state of the chunk ``samples`` before ``step``.

        Parameters
        ----------
        samples : slice
            The chunk's samples.
        step : int
            A step of :attr:`steps`.

        Returns
        -------
        LoopState

        Raises
        ------
        KeyError
            No state was kept there (the unedited run did not pass with this cache).
        """
        try:
            return self._states[(samples.start, step)]
        except KeyError:
            raise KeyError(f"No loop state kept before step {step} for samples {samples.start}:{samples.stop}; "
                           "run the unedited trajectory with this PrefixCache first.") from None


def _step_kwargs(scheduler, generators, eta) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "generator" in params:
        kwargs["generator"] = generators
    if "eta" in params:
        kwargs["eta"] = eta
    return kwargs


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def _schedule(scheduler, request: TraceRequest, device) -> dict[str, np.ndarray]:
    """Timesteps, sigmas and ᾱ of every loop step (Heun's doubled schedule included)."""
    schedulers.set_timesteps(scheduler, request.steps, device=device, options=request.timestep_options)
    timesteps = scheduler.timesteps
    coords = {"timestep": np.asarray(_numpy(timesteps), dtype=np.float64)}
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) >= len(timesteps):
        coords["sigma"] = np.asarray(_numpy(sigmas[: len(timesteps)]), dtype=np.float64)
    coords["alpha_bar"] = np.array(
        [schedulers.noise_level(scheduler, timestep=t, step_index=i).alpha_bar for i, t in enumerate(timesteps)]
    )
    return coords


class DenoisingLoop:
    """The denoising loop of one validated run, chunk by chunk: what :func:`trace` and every scan run.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
    request : denoisefeat.options.TraceRequest
        The run (:meth:`denoisefeat.options.RunOptions.request`).
    scheduler : diffusers scheduler
        The fresh scheduler that came with the request; each chunk runs on its own copy.
    clock : StepClock, optional
        Set at every denoiser call (step, samples, CFG branch order) for the hooks to read.

    Attributes
    ----------
    family : denoisefeat.families.PipelineFamily
        The pipeline family's pieces; ``family.forward`` is what one denoiser evaluation calls
        (a hook backend may wrap it).
    coords : dict of str to numpy.ndarray
        ``timestep``, ``sigma`` (where the scheduler has them) and ``alpha_bar`` of every step.
    n_steps : int
        Denoiser calls of one chunk's loop (Heun: about twice the inference steps).
    calls : int
        Denoiser calls made so far.
    """

    def __init__(self, pipe, request: TraceRequest, scheduler, *, clock: StepClock | None = None):
        self.request = request
        self.family: PipelineFamily = family_of(pipe, request)
        self.template = scheduler
        self.coords = _schedule(scheduler, request, self.family.device)
        self.n_steps = len(self.coords["timestep"])
        self.clock = clock or StepClock()
        self.calls = 0
        self._conditioning: dict[tuple[int, int], dict] = {}

    def chunks(self, batch_size: int) -> list[slice]:
        """The run's samples in consecutive chunks of ``batch_size`` (the last may be shorter).

        Parameters
        ----------
        batch_size : int
            Samples per chunk.

        Returns
        -------
        list of slice
        """
        n = self.request.n_samples
        return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples → RGB in [0, 1] (decoded by the VAE for latent pipelines).

        Parameters
        ----------
        x : torch.Tensor
            ``(batch, channel, y, x)`` in model space.

        Returns
        -------
        torch.Tensor
            ``(batch, 3, H, W)``.
        """
        return self.family.to_images(x)

    def _begin(self, samples: slice, start: LoopState | None, lanes: int = 1):
        seeds = self.request.seeds[samples] * lanes  # lane-major: every lane has every sample's generator
        generators = [torch.Generator(device=self.family.device).manual_seed(s) for s in seeds]
        if start is None:
            scheduler = copy.deepcopy(self.template)
            schedulers.set_timesteps(scheduler, self.request.steps, device=self.family.device,
                                     options=self.request.timestep_options)
            return 0, self.family.initial_sample(generators, scheduler), scheduler, generators
        for generator, state in zip(generators, start.generator_states * lanes, strict=True):
            generator.set_state(state)
        n = samples.stop - samples.start
        scheduler = _tiled(copy.deepcopy(start.scheduler), n, lanes)
        return start.step, _tiled(start.x.clone(), n, lanes), scheduler, generators

    @torch.no_grad()
    def run(
        self,
        samples: slice,
        *,
        start: LoopState | None = None,
        prefixes: PrefixCache | None = None,
        on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        advance: Callable[[], None] | None = None,
        lanes: int = 1,
    ) -> torch.Tensor:
        """Denoise the samples ``samples`` to the end, from noise or from a kept state.

        Hooks entered around the call (:class:`denoisefeat.hooks.record`, :class:`~denoisefeat.hooks.intervene`
        with this loop's clock) see every denoiser call.

        Parameters
        ----------
        samples : slice
            A chunk of the run's samples (:meth:`chunks`).
        start : LoopState, optional
            Go on from this state (a prefix of the unedited run); default: from the initial noise.
        prefixes : PrefixCache, optional
            Keep the state before each of its steps there.
        on_step : callable, optional
            ``on_step(step, x_t, x0)`` after each step's denoiser call and scheduler step: the
            sample the scheduler held and the scheduler's x̂0 (a writer, a callback).
        advance : callable, optional
            Called once per denoiser call (a progress bar).
        lanes : int
            Denoise ``lanes`` copies of the chunk in one batch, lane-major (``clock.lanes`` tells
            the hooks; :class:`denoisefeat.hooks.intervene` with ``lane=`` edits one copy): several
            edited trajectories for the price of one bigger denoiser call.  Each copy has its own
            generators and (from ``start``) its own copy of the scheduler's per-sample state, so
            each is the trajectory a one-copy run makes.

        Returns
        -------
        torch.Tensor
            The final images ``(lanes * batch, 3, H, W)`` in [0, 1].
        """
        family = self.family
        first, x, scheduler, generators = self._begin(samples, start, lanes)
        cond = self._cond(samples, lanes)
        step_kwargs = _step_kwargs(scheduler, generators, self.request.eta)
        clock = self._set_clock(samples, lanes)
        try:
            for i, t in enumerate(scheduler.timesteps):
                if i < first:
                    continue
                if prefixes is not None and i in prefixes.steps:
                    prefixes.keep(samples, LoopState(i, x.clone(), copy.deepcopy(scheduler),
                                                     [g.get_state() for g in generators]))
                output, step = self._denoise(i, t, x, cond, scheduler, step_kwargs)
                if on_step is not None:
                    x0 = schedulers.predicted_original_sample(
                        scheduler, step_output=step, model_output=output, sample=x, timestep=t, step_index=i
                    )
                    on_step(i, x, x0)
                x = step.prev_sample  # x_{t-1}
                if advance is not None:
                    advance()
        finally:
            clock.step = clock.samples = clock.branches = None
            clock.lanes = 1
        return family.to_images(x)

    def _cond(self, samples: slice, lanes: int = 1) -> dict:
        """The chunk's conditioning (computed once), tiled for ``lanes`` copies of the chunk."""
        family, key = self.family, (samples.start, samples.stop)
        if key not in self._conditioning:
            self._conditioning[key] = family.conditioning(samples)
        halves, n = 2 if family.guided else 1, samples.stop - samples.start
        return {name: value if name in family.shared_inputs else _tiled(value, n, lanes, halves=halves)
                for name, value in self._conditioning[key].items()}

    def _set_clock(self, samples: slice, lanes: int = 1) -> StepClock:
        family, clock = self.family, self.clock
        clock.samples, clock.branches = samples, (family.branches if family.guided else None)
        clock.lanes = lanes
        return clock

    def _denoise(self, i: int, t, x: torch.Tensor, cond: dict, scheduler, step_kwargs: dict):
        """One loop step: the denoiser call at step ``i`` (timestep ``t``), then ``scheduler.step``."""
        self.clock.step = i
        output = self.family.model_output(x, t, cond, scheduler)
        self.calls += 1
        return output, scheduler.step(output, t, x, **step_kwargs)

    def initial_state(self, samples: slice) -> LoopState:
        """The loop of the chunk ``samples`` before step 0: the initial noise and a fresh scheduler.

        Parameters
        ----------
        samples : slice
            A chunk of the run's samples (:meth:`chunks`).

        Returns
        -------
        LoopState
        """
        step, x, scheduler, generators = self._begin(samples, None)
        return LoopState(step, x, scheduler, [g.get_state() for g in generators])

    def step_from(self, samples: slice, state: LoopState) -> torch.Tensor:
        """Run the one step ``state.step`` from a kept state, under the caller's autograd mode.

        What the gradient-based analyses differentiate (the scans use :meth:`run`): with
        ``state.x`` requiring grad inside :func:`torch.enable_grad`, the result carries the graph of
        one denoiser call and one scheduler step (a copy of ``state.scheduler``; the generators are
        restored from ``state``, so a stochastic scheduler draws the noise the full run draws).

        Parameters
        ----------
        samples : slice
            The chunk the state belongs to.
        state : LoopState
            The loop before the step (:meth:`initial_state`, or a :class:`PrefixCache` entry).

        Returns
        -------
        torch.Tensor
            x_{step+1}: the sample the scheduler holds after the step (``prev_sample``).
        """
        generators = [torch.Generator(device=self.family.device) for _ in state.generator_states]
        for generator, kept in zip(generators, state.generator_states, strict=True):
            generator.set_state(kept)
        scheduler = copy.deepcopy(state.scheduler)
        clock = self._set_clock(samples)
        try:
            t = scheduler.timesteps[state.step]
            _, step = self._denoise(state.step, t, state.x, self._cond(samples), scheduler,
                                    _step_kwargs(scheduler, generators, self.request.eta))
        finally:
            clock.step = clock.samples = clock.branches = None
        return step.prev_sample  # x_{t-1}


def _tiled(value, n: int, lanes: int, *, halves: int = 1):
    """``lanes`` lane-major copies of every per-sample tensor in ``value`` (a tensor, a dict, a list, a scheduler).

    A tensor is per-sample when its first axis holds the ``n`` samples (``halves * n`` rows under
    classifier-free guidance: each half is tiled, ``[u_0 … u_L, c_0 … c_L]``) and, for a
    scheduler's state, when it has a sample's axes too (at least 2-d: its 1-d schedule arrays stay).
    """
    if lanes == 1:
        return value
    if torch.is_tensor(value):
        if value.ndim and value.shape[0] == halves * n:
            parts = value.reshape(halves, n, *value.shape[1:])
            return parts.repeat(1, lanes, *([1] * (value.ndim - 1))).reshape(halves * lanes * n, *value.shape[1:])
        if halves != 1 and value.ndim and value.shape[0] == n:  # a per-sample input outside the CFG doubling
            return value.repeat(lanes, *([1] * (value.ndim - 1)))
        return value
    if isinstance(value, dict):
        return {k: _tiled(v, n, lanes, halves=halves) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_tiled(v, n, lanes, halves=halves) for v in value)
    if hasattr(value, "config") and hasattr(value, "step"):  # a scheduler: its per-sample state (multistep history)
        for name, attr in vars(value).items():
            if torch.is_tensor(attr) and attr.ndim >= 2 or isinstance(attr, (list, tuple)):
                setattr(value, name, _tiled_state(attr, n, lanes))
        return value
    return value


def _tiled_state(value, n: int, lanes: int):
    if torch.is_tensor(value):
        return _tiled(value, n, lanes) if value.ndim >= 2 else value
    if isinstance(value, (list, tuple)):
        return type(value)(_tiled_state(v, n, lanes) for v in value)
    return value


# ---------------------------------------------------------------------------------------------
# trace: the loop into a run store
# ---------------------------------------------------------------------------------------------
def trace(
    pipe,
    *,
    store: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    only_samples: slice | None = None,
    keep: Sequence[str] = ("xt", "x0", "images"),
    store_dtype: str = "float32",
    decode_every: int = 1,
    decode_batch: int | None = None,
    writers: int | None = None,
    record=None,
    record_steps=None,
    intervene=None,
    attention=None,
    attention_resolution: int = 16,
    backend: str = "torch",
    model_id: str | None = None,
    progress: bool = False,
    repair: bool = False,
    prefixes: PrefixCache | None = None,
    **run,
) -> Run:
    """Run the denoising loop and store every step of every sample.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
        From :func:`denoisefeat.load_pipeline` or diffusers directly.  Supported: DDPM/DDIM
        pipelines, :class:`~denoisefeat.pipelines.ClassConditionalImagePipeline`, Stable Diffusion
        1.x/2.x, SDXL, DiT, Stable Diffusion 3, Flux and PixArt-Σ.
    store : str or path, optional
    overwrite : bool
        Replace an existing denoisefeat store at ``store``.  The new store is written beside the
        old one and takes its place only once complete: a failed or killed run leaves the old one.
    resume : bool
        Complete a half-written store made with the same settings (only missing sample chunks run,
        in the store's own sample chunks; ``batch_size`` is then taken from the store).
    only_samples : slice, optional
        Compute only the store's sample chunks inside this range (what a cluster task owns);
        ``start``/``stop`` must be multiples of ``batch_size`` (or the sample count).  The store's
        metadata is then not consolidated: the last writer does it (``RunStore.finalize``).
    keep : sequence of {"xt", "x0", "images"}
        Which per-step arrays to store (``final`` is always stored).
    store_dtype : {"float32", "float16"}
        dtype of the stored per-step arrays.
    decode_every : int
        Decode x̂0 to ``images`` at every ``decode_every``-th step only (steps 0, k, 2k, … and the
        last); the other steps of ``images`` stay NaN.  Recorded in ``attrs["run"]["extra"]``.
    decode_batch : int, optional
        Steps whose x̂0 are decoded together in one call (one VAE batch of ``decode_batch`` ×
        ``batch_size`` images); default as many as make at most 32 images.
    writers : int, optional
        Writer threads that compress and write the store while the loop runs (default
        ``min(4, os.cpu_count())``; the chunk files do not depend on it).
    record : str, sequence of str or mapping, optional
        Layers to record and their reducers (see :class:`denoisefeat.hooks.record`), e.g.
        ``{"mid_block": "channel_mean", "up_blocks.1": ["spatial_energy", "full"]}``; stored under
        ``acts/<layer>/<reducer>`` with dims ``(sample, [branch,] step, ...)``.
    record_steps : int, range or iterable of int, optional
        Steps at which to record activations and attention maps (default: all); other steps stay
        NaN.  Recorded outputs are the outputs after any ``intervene`` edits of the same layer.
    intervene : Edit or sequence of Edit, optional
        Edits applied during the run (:class:`denoisefeat.hooks.Edit`); described in
        ``attrs["run"]["extra"]["interventions"]``.
    attention : str, sequence of str or True, optional
        Cross-attention modules (paths or globs; ``True``: all of
        :func:`denoisefeat.hooks.cross_attention_layers`) whose maps to store under
        ``attention/<layer>`` ``(sample, step, token, y, x)``: the conditional branch's image-to-text
        attention probabilities, head-averaged, over the prompts' tokens up to the longest prompt's
        end token (:mod:`denoisefeat.hooks.attention`; per-word maps: ``hooks.word_maps(run, layer, word)``).
        The run's output is unchanged by it, bit for bit.
    attention_resolution : int
        Largest side of a stored attention map; larger layers are area-averaged down to it.
    backend : {"torch", "nnsight"}
        How ``record``/``intervene`` reach the layers: plain torch forward hooks (default), or an
        nnsight trace of every denoiser call (:mod:`denoisefeat.hooks.nnsight_backend`).  Both give
        identical tensors.
    model_id : str, optional
        Name recorded in the store; default: where the pipeline was loaded from.
    progress : bool
        Show a progress bar.
    repair : bool
        With ``resume``: read every chunk first, and recompute the sample chunks whose chunk files
        are missing or do not decode (:meth:`denoisefeat.store.RunStore.repair`).  The repaired
        store equals an undamaged one bit for bit.
    prefixes : PrefixCache, optional
        Keep the loop state before each of its steps, per sample chunk, for runs that go on from
        there (the scans' prefix caching).
    **run
        The run options, the fields of :class:`denoisefeat.options.RunOptions`: ``samples``,
        ``prompts``, ``class_labels``, ``negative_prompt``, ``seed``, ``steps`` (default 50),
        ``scheduler``, ``guidance_scale``, ``eta``, ``height``, ``width``, ``batch_size`` (also the
        store's sample chunk, the unit a writer owns).

    Returns
    -------
    Run
        The store, opened for reading (``run.dataset``, ``run["x0"]``, ``run.acts(...)``).

    Notes
    -----
    Every argument is checked (labels against the model's classes, prompts, layers, reducers,
    edits, backend) before a store is created or opened.  A trace that writes a store on disk
    (without ``only_samples``) holds its lock (``.<name>.lock`` beside it) until it returns: a second
    live writer is refused with the holder's PID and host.

    A sample's trajectory does not depend on its batch (its own generator), but the denoiser's
    floating-point rounding does, by about 1e-6 of ε.  x̂0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t multiplies
    that by √((1−ᾱ_t)/ᾱ_t): up to ~2·10⁴ at the first step of a schedule that ends at ᾱ ≈ 2·10⁻⁹,
    so early-step x̂0 of one sample can differ by ~1e-2 between batch sizes, while the final image
    (ᾱ → 1) agrees to 1e-4.  Compare early-step x̂0 across runs with the same ``batch_size``.
    """
    options = RunOptions.of(run, caller="trace")
    unknown = set(keep) - {"xt", "x0", "images"}
    if unknown:
        raise ValueError(f"keep: unknown arrays {sorted(unknown)}; choose from 'xt', 'x0', 'images'.")
    if backend not in ("torch", "nnsight"):
        raise ValueError(f"backend must be 'torch' or 'nnsight', got {backend!r}.")
    if store_dtype not in ("float32", "float16"):
        raise ValueError(f"store_dtype must be 'float32' or 'float16', got {store_dtype!r}.")
    for name, value in (("decode_every", decode_every), ("decode_batch", decode_batch), ("writers", writers)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if overwrite and resume:
        raise ValueError("Pass overwrite or resume, not both: overwrite starts the store again, resume completes it.")
    if repair and not resume:
        raise ValueError("repair completes an existing store: pass it with resume=True (CLI: --resume --repair).")
    if overwrite and only_samples is not None:
        raise ValueError("overwrite cannot be combined with only_samples (a task writes its share of a shared store).")
    request, scheduler = options.request(pipe, decode="images" in keep, model_id=model_id)
    loop = DenoisingLoop(pipe, request, scheduler)
    current: dict[str, _ChunkCapture] = {}
    recorder, editor = _hook_managers(pipe, request, record, record_steps, intervene, loop, current)
    maps, words = _attention_recorder(pipe, request, attention, attention_resolution, record_steps, loop, current)
    if recorder is not None or editor is not None or maps is not None:
        steps = next((m.steps for m in (recorder, maps) if m is not None), None)
        extra = {"record": None if recorder is None else [[n, r.name] for n, r in recorder.plan],
                 "record_steps": None if steps is None else sorted(steps),
                 "interventions": None if editor is None else editor.describe()}
        if maps is not None:
            extra.update(attention=maps.layers, attention_resolution=maps.resolution)
        request = replace(request, extra=extra)
    if decode_every != 1 and "images" in keep:
        request = replace(request, extra={**request.extra, "decode_every": int(decode_every)})
    decoding = _Decoding.of(loop, decode_every=int(decode_every), decode_batch=decode_batch,
                            batch_size=options.batch_size) if "images" in keep else None
    with contextlib.ExitStack() as lock:
        if store is not None and only_samples is None:  # a cluster task holds its own task lock instead
            lock.enter_context(_store_lock(store))
        run_store = _open_or_create(store, request, n_steps=loop.n_steps, batch_size=options.batch_size,
                                    overwrite=overwrite, resume=resume)
        if repair and run_store.path is not None:
            run_store.repair(run_store.damage(decode=True))
            _write_coordinates(run_store, request, loop.coords, rewrite=True)
        owned = run_store.owned_chunks(only_samples, option="only_samples")  # a cluster task's share
        chunks = [c for c in run_store.incomplete_chunks() if c in owned]
        _write_coordinates(run_store, request, loop.coords)
        if recorder is not None:
            run_store.declare_acts(recorder.layers)
        if maps is not None:
            run_store.declare_attention(maps.layers, words)
        managers = [m for m in (editor, recorder) if m is not None]  # edits first: records show the edited flow
        # the maps come from the attention processors, whichever backend reaches the layers' outputs
        with _hooked(loop, managers, backend), maps or contextlib.nullcontext(), \
                progress_bar(progress, total=len(chunks) * loop.n_steps, label="denoising") as advance:
            for samples in chunks:
                _trace_chunk(loop, run_store, samples, current, keep=keep, store_dtype=store_dtype,
                             decoding=decoding, capture_acts=recorder is not None, writers=writers,
                             prefixes=prefixes, advance=advance)
        if only_samples is None:  # a task's store is consolidated once, after the last writer (jobs merge)
            run_store.finalize()
        return Run(run_store)


@contextlib.contextmanager
def _hooked(loop: DenoisingLoop, managers, backend: str):
    """Enter the record / intervene managers as torch hooks, or route every denoiser call through nnsight."""
    with contextlib.ExitStack() as hooks:
        if backend == "torch":
            for manager in managers:
                hooks.enter_context(manager)
        elif managers:
            from denoisefeat.hooks.nnsight_backend import NNsightForward

            loop.family.forward = NNsightForward(loop.family.denoiser, managers)
        try:
            yield
        finally:
            loop.family.forward = loop.family.denoiser


class _ChunkCapture:
    """What one sample chunk sends to the store: device tensors in, one host copy per step out.

    On CUDA the step's tensors are packed on the device and copied with one non-blocking copy into
    pinned host memory at the end of the step; the writer threads wait for the copy, so the loop
    never does.  On other devices each tensor is copied to the host as it arrives.
    """

    def __init__(self, writer: StepWriter, device: torch.device):
        self.writer = writer
        self.deferred = device.type == "cuda"
        self._staged: list[tuple[str, int, torch.Tensor]] = []

    def add(self, name: str, step: int, tensor: torch.Tensor) -> None:
        """Send ``tensor`` (already in its stored dtype) as step ``step`` of array ``name``."""
        if self.deferred:  # a device copy: the module may reuse its output before the step ends
            self._staged.append((name, step, tensor.detach().clone()))
        else:
            self.writer.append(name, step, tensor.detach().to("cpu", copy=True).numpy())

    def flush(self) -> None:
        """Copy what the step staged to the host (CUDA: one packed non-blocking copy per dtype)."""
        staged, self._staged = self._staged, []
        for dtype in dict.fromkeys(t.dtype for _, _, t in staged):
            group = [(name, step, t) for name, step, t in staged if t.dtype == dtype]
            packed = torch.cat([t.reshape(-1) for _, _, t in group])
            cuda = packed.is_cuda
            host = torch.empty(packed.shape, dtype=dtype, pin_memory=cuda)
            host.copy_(packed, non_blocking=cuda)
            ready = None
            if cuda:  # the writer threads wait for the copy, the loop goes on
                done = torch.cuda.Event()
                done.record()
                ready = done.synchronize
            offset = 0
            for name, step, t in group:
                part = host[offset:offset + t.numel()].view(t.shape)
                offset += t.numel()
                self.writer.append(name, step, part.numpy(), ready=ready)


@dataclass(frozen=True)
class _Decoding:
    """Which steps' x̂0 are decoded to ``images``, and how many steps go into one decoder call."""

    steps: frozenset[int]
    batch: int
    every: int

    @classmethod
    def of(cls, loop: DenoisingLoop, *, decode_every: int, decode_batch: int | None, batch_size: int) -> _Decoding:
        last = loop.n_steps - 1
        steps = frozenset(range(0, loop.n_steps, decode_every)) | {last}
        batch = decode_batch if decode_batch is not None else max(1, 32 // batch_size)
        return cls(steps=steps, batch=int(batch), every=decode_every)


def _stored(tensor: torch.Tensor, dtype: str) -> torch.Tensor:
    """``tensor`` in the store's dtype, converted on its device (float32 for dtypes numpy lacks)."""
    return tensor.to(getattr(torch, dtype))


def _trace_chunk(loop: DenoisingLoop, run_store: RunStore, samples: slice, current: dict, *, keep, store_dtype,
                 decoding: _Decoding | None, capture_acts: bool, writers, prefixes, advance) -> None:
    """Run one sample chunk, writing its steps and its final images, then mark it complete."""
    writer = StepWriter(run_store, samples, workers=writers)
    capture = current["capture"] = _ChunkCapture(writer, loop.family.device)
    for name in keep:
        selected = decoding.steps if name == "images" and decoding.every > 1 else None
        writer.declare(name, tail_dims=_DIMS[name], dtype=store_dtype, steps=selected,
                       step_multiple=decoding.every if name == "images" else 1)
    undecoded: list[tuple[int, torch.Tensor]] = []  # (step, x̂0) waiting for one batched decode
    last = loop.n_steps - 1

    def decode() -> None:
        images = loop.to_images(torch.cat([x0 for _, x0 in undecoded]))
        for (step, _), image in zip(undecoded, images.split(samples.stop - samples.start), strict=True):
            capture.add("images", step, _stored(image, store_dtype))
        undecoded.clear()

    def write_step(step: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if "xt" in keep:
            capture.add("xt", step, _stored(x, store_dtype))
        if "x0" in keep:
            capture.add("x0", step, _stored(x0, store_dtype))
        if decoding is not None and step in decoding.steps:
            undecoded.append((step, x0))
            if len(undecoded) == decoding.batch or step == last:
                decode()
        capture.flush()

    try:
        final = loop.run(samples, prefixes=prefixes, on_step=write_step if keep or capture_acts else None,
                         advance=advance)
    finally:
        writer.close()
    run_store.ensure_array(
        "final", shape=(run_store.n_samples, *final.shape[1:]), dims=("sample", "rgb", "height", "width"),
        dtype=store_dtype,
    )[samples] = _numpy(final)
    run_store.mark_complete(samples)


def _store_lock(path):
    """The lock of the store at ``path`` (a file beside it), as the jobs' task locks are made."""
    from denoisefeat.locking import TaskLock

    path = Path(path).expanduser().resolve()
    if not path.parent.is_dir():
        raise StoreError(f"Cannot create {str(path)!r}: the folder {str(path.parent)!r} does not exist.")
    return TaskLock(path.with_name(f".{path.name}.lock"), what=f"The store {str(path)!r}")


def _hook_managers(pipe, request, record, record_steps, edits, loop, current):
    """The record and intervene context managers of a trace (not entered), validated against the run."""
    if record is None and edits is None:
        return None, None
    n_loop, clock = loop.n_steps, loop.clock
    from denoisefeat import hooks
    from denoisefeat.hooks.reducers import band_coords

    recorder = editor = None
    if record is not None:
        def sink(layer, reducer, step, tensor, dims, branched):
            capture = current["capture"]
            writer, name = capture.writer, acts_path(layer, reducer)
            dtype = "float16" if tensor.dtype == torch.float16 else "float32"  # fp16 models: fp16 storage
            if not writer.declared(name):
                attrs = {"layer": layer, "reducer": reducer}
                if branched:
                    attrs["branches"] = list(BRANCHES)
                if "band" in dims:
                    attrs["bands"] = list(band_coords())
                lead = ("sample", "branch", "step") if branched else ("sample", "step")
                shape = (request.n_samples, 2, n_loop) if branched else (request.n_samples, n_loop)
                writer.declare(name, tail_dims=dims, dtype=dtype, lead_dims=lead, lead_shape=shape,
                               attrs=attrs, steps=recorder.steps,
                               compressors=FAST_COMPRESSORS if reducer == "full" else COMPRESSORS)
            capture.add(name, step, _stored(tensor, dtype))

        recorder = hooks.record(pipe, record, steps=steps_selection(record_steps, n_loop), clock=clock, sink=sink)
    if edits is not None:
        editor = hooks.intervene(pipe, edits, clock=clock)
        for edit in editor.edits:
            if edit.steps is not None and max(edit.steps, default=0) >= n_loop:
                raise ValueError(f"Edit of {edit.layer!r} names step {max(edit.steps)}; the run has {n_loop} steps.")
            if edit.samples is not None and max(edit.samples, default=0) >= request.n_samples:
                raise ValueError(
                    f"Edit of {edit.layer!r} names sample {max(edit.samples)}; the run has {request.n_samples}."
                )
        editor.check_seeds(request.seeds)
    return recorder, editor


def _attention_recorder(pipe, request, layers, resolution, steps, loop, current):
    """The attention-map recorder of a trace (not entered) and each prompt's word spans, or ``(None, None)``."""
    if layers is None or layers is False:
        return None, None
    from denoisefeat.hooks.attention import attention_maps, word_spans
    from denoisefeat.store import attention_path

    # the tokenizer of the text tokens the denoiser attends to: Flux's are T5's (CLIP gives only the pooled vector)
    tokenizer = getattr(pipe, "tokenizer_2" if request.family == "flux" else "tokenizer", None)
    if request.prompts is None or tokenizer is None:
        raise ValueError("attention maps need a text-conditional pipeline traced with prompts; "
                         f"{type(pipe).__name__} takes none.")
    words = {prompt: word_spans(tokenizer, prompt) for prompt in dict.fromkeys(request.prompts)}
    tokens = max(len(tokenizer(prompt).input_ids) for prompt in words)  # start, words, end: no padding
    n_loop = loop.n_steps

    def sink(layer, step, array):  # the maps come to the host in the processor; the writer takes them as they are
        writer = current["capture"].writer
        name = attention_path(layer)
        if not writer.declared(name):
            writer.declare(name, tail_dims=("token", "y", "x"), dtype="float32", lead_dims=("sample", "step"),
                           lead_shape=(request.n_samples, n_loop), attrs={"layer": layer, "branch": "cond"},
                           steps=recorder.steps)
        writer.append(name, step, array)

    recorder = attention_maps(pipe, None if layers is True else layers, steps=steps_selection(steps, n_loop),
                              resolution=resolution, tokens=tokens, clock=loop.clock, sink=sink)
    return recorder, words


_DIMS = {
    "xt": ("channel", "y", "x"),
    "x0": ("channel", "y", "x"),
    "images": ("rgb", "height", "width"),
}


def _write_coordinates(store: RunStore, request: TraceRequest, coords: dict, *, rewrite: bool = False) -> None:
    if store.holds("timestep") and not rewrite:
        return
    store.write_coordinate("step", np.arange(len(coords["timestep"])), dim="step")
    for name, values in coords.items():
        store.write_coordinate(name, values, dim="step")
    store.write_coordinate("seed", np.asarray(request.seeds, dtype=np.int64), dim="sample")
    if request.class_labels is not None:
        store.write_coordinate("class_label", np.asarray(request.class_labels, dtype=np.int64), dim="sample")


def _open_or_create(path, request: TraceRequest, *, n_steps, batch_size, overwrite, resume) -> RunStore:
    attrs = request.as_attrs()
    if path is not None and resume and Path(path).expanduser().exists():
        store = RunStore.open(path)
        diff = store.differing_attrs(attrs, added=TraceRequest.ADDED_ATTRS)
        if diff:
            raise RunMismatchError(
                f"Cannot resume {str(store.path)!r}: it was started with different settings ({', '.join(diff)}). "
                "Resume with the same settings, or write a new store."
            )
        return store
    return RunStore.create(
        path, run_attrs=attrs, n_samples=request.n_samples, n_steps=n_steps,
        chunk_samples=batch_size, overwrite=overwrite,
    )
