"""Shared pieces of the benchmark scripts (they print JSON; none of this is timed in tests)."""

from __future__ import annotations

import json
import platform
import resource
import statistics
import sys
import time

import torch


def timed(fn, *, repeats: int) -> dict:
    """Run ``fn`` ``repeats`` times; return the times in seconds and their median."""
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "times_s": [round(t, 4) for t in times]}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def emit(result: dict) -> None:
    print(json.dumps(result, indent=2, default=str))


#: Stable Diffusion 1.5's published ``UNet2DConditionModel`` configuration.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)


def random_sd15_pipeline(*, dtype=torch.float16, device="cuda"):
    """Stable Diffusion 1.5's published architecture with random weights (no download).

    UNet, VAE and text encoder use SD 1.5's configs; the tokenizer is denoisefeat's tiny
    character tokenizer padded to 77 positions (tokenisation is not what is being measured).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from denoisefeat.tiny import tiny_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    tokenizer = tiny_clip_tokenizer(max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def add_model_arguments(parser) -> None:
    """The options every pipeline benchmark takes."""
    parser.add_argument("--model", default="toy", help="a load_pipeline source, or sd15-random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)


class PipelineBench:
    """The pipeline, its conditions, the plain-pipeline call and fresh store paths of one benchmark.

    ``decode_plain``: whether the plain latent pipeline decodes its output (False: ``output_type="latent"``).
    """

    def __init__(self, args, *, decode_plain: bool):
        import tempfile
        from pathlib import Path

        from denoisefeat.models import load_pipeline

        self.args = args
        self.dtype = torch.float16 if args.fp16 else torch.float32
        if args.model == "sd15-random":
            self.pipe = random_sd15_pipeline(dtype=self.dtype, device=args.device)
            self.condition = {"prompts": ["a photo of a red circle"] * args.samples}
            self.plain_kwargs = {"prompt": self.condition["prompts"], "output_type": "pt" if decode_plain else "latent"}
        else:
            self.pipe = load_pipeline(args.model, device=args.device, dtype=self.dtype if args.fp16 else None)
            self.condition = {"class_labels": [0] * args.samples}
            self.plain_kwargs = {"class_labels": self.condition["class_labels"], "output_type": "pt"}
        self.seeds = list(range(args.samples))
        self._tmp = Path(tempfile.mkdtemp())
        self._count = 0

    def plain(self) -> None:
        generators = [torch.Generator(self.args.device).manual_seed(s) for s in self.seeds]
        self.pipe(generator=generators, num_inference_steps=self.args.steps, **self.plain_kwargs)

    def trace(self, **kwargs):
        """A callable running ``denoisefeat.trace`` on the benchmark's samples into a new store."""
        from denoisefeat.trajectory import trace

        def run():
            self._count += 1
            trace(self.pipe, seed=self.seeds, steps=self.args.steps, batch_size=self.args.samples,
                  store=self._tmp / f"run{self._count}.zarr", **self.condition, **kwargs)

        return run

    def header(self, name: str) -> dict:
        a = self.args
        return {"benchmark": name, "model": a.model, "device": a.device, "dtype": str(self.dtype),
                "samples": a.samples, "steps": a.steps, "repeats": a.repeats, "machine": machine()}


def interleaved(variants: dict, *, repeats: int) -> dict[str, list[float]]:
    """Run each variant once per round, ``repeats`` rounds, so that drift hits every variant alike."""
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, repeats=1)["median_s"])
    return times


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]
