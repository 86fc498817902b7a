"""RGB images in [0, 1] → 8-bit arrays and strips of them (encoded by :mod:`denoisefeat.viz.frames`)."""

from __future__ import annotations

import numpy as np

from denoisefeat.viz.frames import decode_image_uri, downscale, to_uint8


def decode_png_uri(uri: str) -> np.ndarray:
    """The (H, W, 3) uint8 image of a PNG data URI.

    A lossless frame of :class:`~denoisefeat.viz.frames.FramePolicy`.
    """
    if not uri.startswith("data:image/png;base64,"):
        raise ValueError("not a PNG data URI")
    return decode_image_uri(uri)


def strip(images, *, max_images: int = 8, max_px: int | None = None) -> np.ndarray:
    """(..., 3, H, W) in [0, 1] → one (h, n·(w+1)−1, 3) uint8 strip of at most ``max_images`` images.

    ``max_px``: box-downscale each image first so that its longer side is at most this
    (:func:`denoisefeat.viz.frames.downscale`).
    """
    array = np.asarray(images, dtype=np.float64)
    if array.ndim < 3 or array.shape[-3] != 3:
        raise ValueError(f"images must have shape (..., 3, H, W) with values in [0, 1], got {array.shape}")
    flat = array.reshape(-1, *array.shape[-3:])[:max_images]
    if max_px is not None:
        flat = downscale(flat, max_px=max_px)
    flat = to_uint8(flat)
    n, H, W, _ = flat.shape
    out = np.full((H, n * (W + 1) - 1, 3), 255, dtype=np.uint8)
    for i in range(n):
        out[:, i * (W + 1): i * (W + 1) + W] = flat[i]
    return out
