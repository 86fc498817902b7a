"""How pictures are put into a report or a viewer: downscaled, encoded compactly, steps subsampled.

A Stable Diffusion x̂0 is 512 × 512 px; a lossless PNG of one is 350–450 KB, so 16 samples × 50
steps of them would make a report of ≈ 300 MB.  A :class:`FramePolicy` bounds every picture:

* **Size**: a frame whose longer side exceeds ``max_px`` is downscaled (aspect kept) with
  Pillow's box filter on the stored float values, then rounded to 8 bits: each output pixel is the
  area-weighted mean of the stored pixels it covers (for an integer factor ``f``, the mean of an
  ``f × f`` block), which is anti-aliased and linear (the downscaled band-pass images still add up
  to the downscaled luminance).  Smaller frames are never upscaled.
* **Encoding**: frames whose shorter side is at most ``lossless_px`` px (the toy model's 32 px,
  say, or a strip of such frames) are 8-bit PNG, exact; larger ones WebP at ``quality`` (lossy).
* **Steps**: at most ``max_steps`` steps on a slider: evenly spaced, the first and the last
  always among them (:meth:`FramePolicy.steps`).
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, replace

import numpy as np

__all__ = ["FramePolicy", "decode_image_uri", "downscale"]

_FORMATS = {"png": "image/png", "webp": "image/webp"}


def to_uint8(images, *, channel_axis: int = -3) -> np.ndarray:
    """Images in [0, 1] with an RGB axis → uint8, channels last (clipped, rounded).

    Parameters
    ----------
    images : array_like
        RGB images in [0, 1].
    channel_axis : int
        The RGB axis.

    Returns
    -------
    numpy.ndarray of uint8
        Channels last.
    """
    array = np.asarray(images, dtype=np.float64)
    if array.ndim < 3 or array.shape[channel_axis] != 3:
        raise ValueError(f"expected RGB images with 3 channels on axis {channel_axis}, got shape {array.shape}")
    array = np.moveaxis(array, channel_axis, -1)
    return np.round(np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)


def downscale(images, *, max_px: int) -> np.ndarray:
    """Box-filter images so that their longer side is at most ``max_px`` (aspect ratio kept).

    Parameters
    ----------
    images : array
        ``(..., H, W)`` float images (an RGB axis before ``H`` is one more leading axis: each
        channel is downscaled on its own).
    max_px : int
        The longest side allowed, at least 1.

    Returns
    -------
    numpy.ndarray
        ``(..., h, w)`` float32 with ``max(h, w) = min(max(H, W), max_px)``; the input itself
        (any float dtype) when it is small enough already.
    """
    from PIL import Image

    array = np.asarray(images)
    if array.ndim < 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"images must be float arrays of shape (..., H, W), got {array.dtype} {array.shape}")
    if isinstance(max_px, bool) or int(max_px) < 1:
        raise ValueError(f"max_px must be at least 1, got {max_px!r}")
    height, width = array.shape[-2:]
    target = _target_size(height, width, int(max_px))
    if target == (height, width):
        return array
    flat = array.reshape(-1, height, width).astype(np.float32, copy=False)
    size = (target[1], target[0])  # Pillow: (width, height)
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(f), mode="F").resize(size, Image.Resampling.BOX))
                    for f in flat])
    return out.reshape(*array.shape[:-2], *target)


def _target_size(height: int, width: int, max_px: int) -> tuple[int, int]:
    longest = max(height, width)
    if longest <= max_px:
        return height, width
    scale = max_px / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def decode_image_uri(uri: str) -> np.ndarray:
    """The (H, W, 3) uint8 image of a PNG or WebP data URI (inverse of :meth:`FramePolicy.encode`).

    Parameters
    ----------
    uri : str
        A ``data:image/png;base64,…`` or ``data:image/webp;base64,…`` URI.

    Returns
    -------
    numpy.ndarray of uint8
        ``(H, W, 3)``.
    """
    from PIL import Image

    for mime in _FORMATS.values():
        prefix = f"data:{mime};base64,"
        if uri.startswith(prefix):
            return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):]))).convert("RGB"))
    raise ValueError(f"not a PNG or WebP data URI: {uri[:40]!r}")


@dataclass(frozen=True)
class FramePolicy:
    """Size, encoding and step subsampling of the pictures of a report or a viewer.

    Parameters
    ----------
    max_px : int
        Longest side of a shown frame (larger frames are box-downscaled).
    max_steps : int
        Most steps on a slider (at least 2).
    quality : int
        WebP quality (1–100) of frames larger than ``lossless_px``.
    lossless_px : int
        Frames whose shorter side is at most this are PNG (exact).
    """

    max_px: int = 128
    max_steps: int = 50
    quality: int = 80
    lossless_px: int = 64

    def __post_init__(self):
        for name, low in (("max_px", 8), ("max_steps", 2), ("quality", 1), ("lossless_px", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"FramePolicy.{name} must be an integer >= {low}, got {value!r}")
        if self.quality > 100:
            raise ValueError(f"FramePolicy.quality must be at most 100, got {self.quality}")

    def steps(self, n_steps: int) -> list[int]:
        """Positions of the steps shown out of ``n_steps``: all, or ``max_steps`` evenly spaced with both ends."""
        if n_steps <= self.max_steps:
            return list(range(n_steps))
        return sorted({int(round(v)) for v in np.linspace(0, n_steps - 1, self.max_steps)})

    def frames(self, images) -> np.ndarray:
        """``(..., 3, H, W)`` images in [0, 1] → ``(..., h, w, 3)`` uint8 frames at this policy's size.

        The float images are box-downscaled first (:func:`downscale`, per channel), then clipped to
        [0, 1], scaled by 255 and rounded: one rounding, of the area mean.
        """
        array = np.asarray(images)
        if array.ndim < 3 or array.shape[-3] != 3:
            raise ValueError(f"images must have shape (..., 3, H, W) with values in [0, 1], got {array.shape}")
        return to_uint8(downscale(array, max_px=self.max_px))

    def format(self, height: int, width: int) -> str:
        """``"png"`` for a frame whose shorter side is at most ``lossless_px`` px, else ``"webp"``."""
        return "png" if min(height, width) <= self.lossless_px else "webp"

    def encode(self, frame: np.ndarray) -> str:
        """One (h, w, 3) uint8 frame as a data URI (PNG or WebP, see :meth:`format`)."""
        from PIL import Image

        frame = np.ascontiguousarray(frame)
        kind = self.format(*frame.shape[:2])
        buffer = io.BytesIO()
        image = Image.fromarray(frame, mode="RGB")
        if kind == "png":
            image.save(buffer, format="PNG", optimize=True)
        else:
            image.save(buffer, format="WEBP", quality=self.quality, method=4)
        return f"data:{_FORMATS[kind]};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def smaller(self) -> FramePolicy | None:
        """The next policy down a report's budget ladder, or None at the bottom.

        The ladder halves the steps on the slider while there are more than 13, then shrinks the
        frames by a quarter at a time down to 32 px, then keeps 7 steps: its bottom is
        32 px × 7 steps.
        """
        if self.max_steps > 13:
            return replace(self, max_steps=max(13, math.ceil(self.max_steps / 2)))
        if self.max_px > 32:
            return replace(self, max_px=max(32, self.max_px * 3 // 4))
        if self.max_steps > 7:
            return replace(self, max_steps=7)
        return None

    def describe(self, height: int, width: int) -> str:
        """One sentence for a report's header: how a stored ``height × width`` frame is shown."""
        h, w = _target_size(height, width, self.max_px)
        kind = self.format(h, w)
        how = "PNG (lossless)" if kind == "png" else f"WebP at quality {self.quality}"
        if (h, w) == (height, width):
            return f"frames shown at their stored {width} × {height} px as {how}"
        return f"frames box-downscaled from {width} × {height} to {w} × {h} px, {how}"
