"""Wall time of each known-fact analysis (``denoisefeat.analyses.known_facts``), in one process.

    python benchmarks/known_facts.py --samples 4 --steps 10                      # the toy model, CPU
    python benchmarks/known_facts.py --model sd15-random --device cuda --fp16 --samples 4 --steps 20

Runs :func:`~denoisefeat.analyses.known_facts` once (the facts trace with every block recorded, then
band_snr, step_similarity, skip_spectrum and perturbation_timing) and prints JSON: the seconds of
each stage, the denoiser calls each makes (``perturbation_timing``: one clean trajectory, then each
perturbed one from the clean run's state before its step), the plain pipeline's time for the same samples and steps, and
every fact's number with its interval.  ``--repeats`` is ignored: one run of each, timed by
``known_facts`` itself.  On large models pass ``--reducer "random_projection(16)"``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import PipelineBench, add_model_arguments, emit, machine  # noqa: E402

from denoisefeat.analyses import known_facts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--reducer", default="full", help="how step_similarity's blocks are recorded")
    parser.add_argument("--n-boot", type=int, default=200)
    args = parser.parse_args()
    bench = PipelineBench(args, decode_plain=True)
    start = time.perf_counter()
    bench.plain()
    plain_s = time.perf_counter() - start
    facts = known_facts(bench.pipe, **bench.condition, steps=args.steps, similarity_reducer=args.reducer,
                        n_boot=args.n_boot, batch_size=args.samples)
    grid = sorted(set(facts.perturbation_timing["step_start"]))
    calls = {"trace": args.steps, "skip_spectrum": args.steps if facts.skip_spectrum is not None else 0,
             "perturbation_timing": int(facts.perturbation_timing.attrs["denoiser_calls"]),
             "perturbation_timing_from_step_0": args.steps * (1 + len(grid))}
    summary = facts.summary().drop(columns="claim").to_dict("records")
    emit({"benchmark": "known_facts", "model": args.model, "device": args.device, "samples": args.samples,
          "steps": args.steps, "machine": machine(), "plain_pipeline_s": round(plain_s, 3),
          "seconds": {name: round(s, 3) for name, s in facts.seconds.items()},
          "total_s": round(sum(facts.seconds.values()), 3), "denoiser_calls_per_batch": calls,
          "perturbed_steps": grid, "facts": summary})


if __name__ == "__main__":
    main()
