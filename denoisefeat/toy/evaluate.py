"""Quality gate of the toy model: an independent DiffShapes classifier.

:class:`DiffShapesClassifier` is a small CNN with three heads (shape, colour,
texture) trained on DiffShapes ground truth, with noise, blur and contrast
augmentation so that it also reads generated samples.  It shares nothing with
the diffusion model but the generator.  :func:`sample_toy` draws class-
conditional samples with an explicit DDIM loop and classifier-free guidance,
and :func:`evaluate_samples` scores samples against their conditions.

The gate for the shipped toy model (50 DDIM steps, guidance allowed): shape
>= 90 %, colour >= 95 %, texture >= 80 % of samples classified as their
condition.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from denoisefeat.toy.diffshapes import COLORS, NULL_LABEL, NUM_CONDITIONS, SHAPES, TEXTURES, generate

__all__ = [
    "ClassifierConfig",
    "DiffShapesClassifier",
    "train_classifier",
    "load_classifier",
    "save_classifier",
    "classifier_accuracy",
    "evaluate_samples",
    "confusion_matrices",
    "sample_toy",
    "evaluate_unet",
    "save_grid",
    "GATE",
    "GATE_MINIMUM",
    "DEFAULT_CLASSIFIER_DIR",
]

#: Accuracy targets of the quality gate (generated samples vs their conditioning).
GATE = {"shape": 0.90, "color": 0.95, "texture": 0.80}
#: Below these the toy model is not fit to ship.
GATE_MINIMUM = {"shape": 0.80, "color": 0.90, "texture": 0.70}

#: Where the cached gate classifier lives (shipped with the package).
DEFAULT_CLASSIFIER_DIR = Path(__file__).parent / "weights" / "classifier"
_HEADS = {"shape": len(SHAPES), "color": len(COLORS), "texture": len(TEXTURES)}


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture and training knobs of :class:`DiffShapesClassifier`.

    Attributes
    ----------
    size : int
        Image size the classifier is trained on.
    width : int
        Channels of the first convolution; deeper stages use 2x and 4x.
    iterations : int
        Optimizer steps.
    batch_size : int
        Images per step.
    learning_rate : float
        Peak Adam learning rate (one-cycle schedule).
    noise_std : float
        Maximum standard deviation of the additive Gaussian noise augmentation.
    blur_sigma : float
        Maximum Gaussian blur sigma (pixels) of the blur augmentation.
    threads : int
        ``torch.set_num_threads`` while training.
    """

    size: int = 32
    width: int = 24
    iterations: int = 2400
    batch_size: int = 64
    learning_rate: float = 3e-3
    noise_std: float = 0.08
    blur_sigma: float = 0.8
    threads: int = 1


class DiffShapesClassifier(nn.Module):
    """A small CNN with shape, colour and texture heads.

    Parameters
    ----------
    config : ClassifierConfig
        Architecture (``width``) and the training recipe it was trained with.

    Notes
    -----
    Four stages at 32, 16, 8 and 4 pixels (two 3x3 convolutions with batch
    norm each), global average pooling, then one linear head per attribute.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        channels = [3, w, 2 * w, 4 * w, 4 * w]
        layers: list[nn.Module] = []
        for stage, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            for conv_in in (c_in, c_out):
                layers += [nn.Conv2d(conv_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(channels[-1], count) for name, count in _HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of each head.

        Parameters
        ----------
        images : torch.Tensor, shape (n, 3, H, W)
            RGB in ``[0, 1]``.

        Returns
        -------
        dict of str to torch.Tensor
            ``{"shape": (n, 5), "color": (n, 6), "texture": (n, 4)}`` logits.
        """
        pooled = self.features(images * 2.0 - 1.0).mean(dim=(2, 3))
        return {name: head(pooled) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, *, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Predicted shape, colour and texture indices.

        Parameters
        ----------
        images : array_like, shape (n, 3, H, W)
            RGB in ``[0, 1]``.
        batch_size : int, optional
            Images per forward pass.

        Returns
        -------
        dict of str to ndarray of int
            ``{"shape", "color", "texture"}``: indices into :data:`SHAPES`,
            :data:`COLORS`, :data:`TEXTURES`; and ``"label"``, the joint label.
        """
        self.eval()
        images = torch.as_tensor(np.asarray(images, dtype=np.float32))
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (n, 3, H, W), got {tuple(images.shape)}")
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in _HEADS}
        for start in range(0, len(images), batch_size):
            logits = self(images[start : start + batch_size])
            for name in _HEADS:
                chunks[name].append(logits[name].argmax(dim=1).numpy())
        predictions = {
            name: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64) for name, parts in chunks.items()
        }
        predictions["label"] = (
            predictions["shape"] * len(COLORS) + predictions["color"]
        ) * len(TEXTURES) + predictions["texture"]
        return predictions


def _augment(images: torch.Tensor, generator: torch.Generator, config: ClassifierConfig) -> torch.Tensor:
    """Random blur, contrast/brightness jitter and Gaussian noise, per image."""
    n = len(images)
    # Gaussian blur with a per-image sigma in [0, blur_sigma] (3x3 separable kernel).
    sigma = torch.rand(n, generator=generator) * config.blur_sigma
    offsets = torch.tensor([-1.0, 0.0, 1.0])
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (n, 3)
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    rows = sum(kernel[:, k, None, None, None] * padded[:, :, k : k + images.shape[2], :] for k in range(3))
    blurred = sum(kernel[:, k, None, None, None] * rows[:, :, :, k : k + images.shape[3]] for k in range(3))
    # Contrast and brightness jitter around the image mean, then noise.
    mean = blurred.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1.0 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.2
    brightness = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.1
    noise_std = torch.rand(n, 1, 1, 1, generator=generator) * config.noise_std
    noisy = (blurred - mean) * contrast + mean + brightness
    noisy = noisy + noise_std * torch.randn(images.shape, generator=generator)
    return noisy.clamp(0.0, 1.0)


def train_classifier(
    *, seed: int, config: ClassifierConfig | None = None, progress: bool = False
) -> DiffShapesClassifier:
    """Train the gate classifier on fresh DiffShapes images.

    Parameters
    ----------
    seed : int
        Seeds the weights, the data (``generate(..., seed=seed * 100_003 + step)``)
        and the augmentation.
    config : ClassifierConfig, optional
        Defaults to ``ClassifierConfig()`` (2400 steps of 64 images; 100 % per
        head on 2000 held-out images; it took 41 min at low priority on a
        2-core machine shared with a diffusion training run).  The trained
        classifier is cached in :data:`DEFAULT_CLASSIFIER_DIR`.
    progress : bool, optional
        Print the running loss every 100 steps.

    Returns
    -------
    DiffShapesClassifier
        In eval mode.
    """
    config = ClassifierConfig() if config is None else config
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(seed)
        model = DiffShapesClassifier(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.learning_rate, total_steps=config.iterations, pct_start=0.15
        )
        generator = torch.Generator().manual_seed(seed)
        model.train()
        running = 0.0
        for step in range(config.iterations):
            batch = generate(config.batch_size, seed=seed * 100_003 + step, size=config.size)
            images = _augment(torch.from_numpy(batch.images), generator, config)
            logits = model(images)
            loss = sum(
                F.cross_entropy(logits[name], torch.from_numpy(getattr(batch, name))) for name in _HEADS
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.item()
            if progress and (step + 1) % 100 == 0:
                print(f"classifier step {step + 1}/{config.iterations} loss {running / 100:.4f}", flush=True)
                running = 0.0
    finally:
        torch.set_num_threads(previous_threads)
    return model.eval()


def save_classifier(classifier: DiffShapesClassifier, directory: str | os.PathLike) -> Path:
    """Save a classifier as ``model.safetensors`` and ``config.json``.

    Parameters
    ----------
    classifier : DiffShapesClassifier
    directory : path

    Returns
    -------
    pathlib.Path
        ``directory``.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(asdict(classifier.config), indent=2))
    return directory


def load_classifier(directory: str | os.PathLike = DEFAULT_CLASSIFIER_DIR) -> DiffShapesClassifier:
    """Load a classifier written by :func:`save_classifier`.

    Parameters
    ----------
    directory : path, optional
        Defaults to the cached gate classifier shipped with the package.

    Returns
    -------
    DiffShapesClassifier
        In eval mode.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    config = ClassifierConfig(**json.loads((directory / "config.json").read_text()))
    classifier = DiffShapesClassifier(config)
    classifier.load_state_dict(load_file(directory / "model.safetensors"))
    return classifier.eval()


def _checked_labels(labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CONDITIONS):
        raise ValueError(f"labels must lie in [0, {NUM_CONDITIONS})")
    return labels


def _attributes(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Shape, colour and texture indices of joint labels."""
    return {
        "shape": labels // (len(COLORS) * len(TEXTURES)),
        "color": (labels // len(TEXTURES)) % len(COLORS),
        "texture": labels % len(TEXTURES),
    }


def evaluate_samples(
    images: np.ndarray | torch.Tensor, labels: np.ndarray, classifier: DiffShapesClassifier
) -> dict[str, float]:
    """Fraction of images whose attributes match their conditioning labels.

    Parameters
    ----------
    images : array_like, shape (n, 3, H, W)
        RGB in ``[0, 1]`` (generated samples or real images).
    labels : array_like of int, shape (n,)
        Joint labels the images were conditioned on.
    classifier : DiffShapesClassifier

    Returns
    -------
    dict of str to float
        Accuracies ``"shape"``, ``"color"``, ``"texture"`` and ``"joint"`` (all three right).
    """
    labels = _checked_labels(labels, len(images))
    predicted = classifier.predict(images)
    truth = _attributes(labels)
    scores = {name: float(np.mean(predicted[name] == truth[name])) for name in _HEADS}
    scores["joint"] = float(np.mean(predicted["label"] == labels))
    return scores


def confusion_matrices(
    images: np.ndarray | torch.Tensor, labels: np.ndarray, classifier: DiffShapesClassifier
) -> dict[str, np.ndarray]:
    """Counts of conditioned against classified attribute values, one matrix per head.

    Parameters
    ----------
    images : array_like, shape (n, 3, H, W)
        RGB in ``[0, 1]``.
    labels : array_like of int, shape (n,)
        Joint labels the images were conditioned on.
    classifier : DiffShapesClassifier

    Returns
    -------
    dict of str to ndarray of int64
        ``{"shape": (5, 5), "color": (6, 6), "texture": (4, 4)}``: entry ``[i, j]``
        counts the images conditioned on value ``i`` (row, indexing :data:`SHAPES`,
        :data:`COLORS`, :data:`TEXTURES`) that the classifier reads as value ``j``.
        Each matrix sums to ``n``; its trace over ``n`` is that head's accuracy in
        :func:`evaluate_samples`.
    """
    labels = _checked_labels(labels, len(images))
    predicted = classifier.predict(images)
    truth = _attributes(labels)
    matrices = {}
    for name, count in _HEADS.items():
        matrix = np.zeros((count, count), dtype=np.int64)
        np.add.at(matrix, (truth[name], predicted[name]), 1)
        matrices[name] = matrix
    return matrices


def classifier_accuracy(classifier: DiffShapesClassifier, *, n: int = 2000, seed: int = 10**9) -> dict[str, float]:
    """Accuracy of the classifier on held-out real DiffShapes images.

    Parameters
    ----------
    classifier : DiffShapesClassifier
    n : int, optional
        Number of held-out images.
    seed : int, optional
        Generator seed; the default is far from the training seeds.

    Returns
    -------
    dict of str to float
        As :func:`evaluate_samples`.
    """
    batch = generate(n, seed=seed, size=classifier.config.size)
    return evaluate_samples(batch.images, batch.label, classifier)


@torch.no_grad()
def sample_toy(
    unet,
    scheduler,
    labels: np.ndarray,
    *,
    steps: int = 50,
    guidance_scale: float = 2.0,
    eta: float = 0.0,
    seed: int,
    batch_size: int = 128,
) -> np.ndarray:
    """Class-conditional DDIM samples with classifier-free guidance.

    Parameters
    ----------
    unet : diffusers.UNet2DModel
        Epsilon-predicting, class-conditional (``NULL_LABEL`` = unconditional).
        Its dtype is used for the forward passes; the loop runs in float32.
    scheduler : diffusers.DDIMScheduler
        Configured with the training betas; ``set_timesteps`` is called here.
    labels : array_like of int, shape (n,)
        Joint labels in ``[0, NUM_CONDITIONS)``.
    steps : int, optional
        Number of DDIM steps.
    guidance_scale : float, optional
        ``w`` in ``eps = eps_uncond + w (eps_cond - eps_uncond)``; 1 disables
        guidance (one forward pass per step).
    eta : float, optional
        DDIM stochasticity: 0 is the deterministic DDIM sampler, 1 injects
        fresh noise at every step like ancestral DDPM sampling (which washes out
        the model's errors at high noise levels instead of carrying them along).
    seed : int
        Seeds the initial noise and the noise of ``eta > 0``.  Results depend
        on ``batch_size``.
    batch_size : int, optional
        Samples per loop.

    Returns
    -------
    ndarray of float32, shape (n, 3, H, W)
        Images in ``[0, 1]``.
    """
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    size = unet.config.sample_size
    dtype = unet.dtype
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(labels), unet.config.in_channels, size, size), generator=generator)
    step_generator = torch.Generator().manual_seed(seed + 1)
    outputs = []
    for start in range(0, len(labels), batch_size):
        y = labels[start : start + batch_size]
        x = noise[start : start + batch_size]  # x_T ~ N(0, I)
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            if guidance_scale == 1.0:
                eps = unet(x.to(dtype), t, class_labels=y).sample.float()
            else:
                both = unet(
                    torch.cat([x, x]).to(dtype), t, class_labels=torch.cat([y, torch.full_like(y, NULL_LABEL)])
                ).sample.float()
                eps_cond, eps_uncond = both.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            x = scheduler.step(eps, t, x, eta=eta, generator=step_generator).prev_sample  # x_t -> x_{t-1}
        outputs.append(((x.clamp(-1, 1) + 1) / 2).numpy().astype(np.float32))
    return np.concatenate(outputs)


def evaluate_unet(
    unet,
    scheduler,
    classifier: DiffShapesClassifier,
    *,
    samples_per_condition: int = 1,
    conditions: np.ndarray | None = None,
    steps: int = 50,
    guidance_scale: float = 2.0,
    eta: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    """Sample a toy model on a set of conditions and score the samples.

    Parameters
    ----------
    unet, scheduler
        As :func:`sample_toy`.
    classifier : DiffShapesClassifier
    samples_per_condition : int, optional
        Samples drawn for each condition.
    conditions : array_like of int, optional
        Joint labels to evaluate; all :data:`NUM_CONDITIONS` by default.
    steps, guidance_scale, eta, seed
        As :func:`sample_toy`.

    Returns
    -------
    dict of str to float
        As :func:`evaluate_samples`, plus ``"samples"`` (the count).
    """
    conditions = np.arange(NUM_CONDITIONS) if conditions is None else np.asarray(conditions)
    labels = np.repeat(conditions, samples_per_condition)
    images = sample_toy(unet, scheduler, labels, steps=steps, guidance_scale=guidance_scale, eta=eta, seed=seed)
    scores = evaluate_samples(images, labels, classifier)
    scores["samples"] = float(len(labels))
    return scores


def save_grid(images: np.ndarray, path: str | os.PathLike, *, columns: int = 12, scale: int = 2) -> Path:
    """Save images as one PNG grid.

    Parameters
    ----------
    images : ndarray, shape (n, 3, H, W)
        RGB in ``[0, 1]``.
    path : path
        Destination PNG.
    columns : int, optional
        Images per row; the last row is padded with white.
    scale : int, optional
        Nearest-neighbour upscaling factor (small images stay crisp).

    Returns
    -------
    pathlib.Path
    """
    from PIL import Image

    images = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ValueError(f"images must have shape (n, 3, H, W) with n > 0, got {images.shape}")
    n, _, h, w = images.shape
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    pad = 1  # one white pixel between images
    canvas = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), dtype=np.float32)
    for index, image in enumerate(images):
        r, c = divmod(index, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top : top + h, left : left + w] = image.transpose(1, 2, 0)
    picture = Image.fromarray((canvas * 255 + 0.5).astype(np.uint8))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    picture.save(path)
    return path


def _main() -> None:
    """Train and cache the gate classifier; print its held-out accuracy."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Train the DiffShapes gate classifier.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=ClassifierConfig.iterations)
    parser.add_argument("--out", default=str(DEFAULT_CLASSIFIER_DIR))
    args = parser.parse_args()
    start = time.perf_counter()
    classifier = train_classifier(seed=args.seed, config=ClassifierConfig(iterations=args.iterations), progress=True)
    print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)
    print(json.dumps(classifier_accuracy(classifier)), flush=True)
    save_classifier(classifier, args.out)


if __name__ == "__main__":
    _main()
