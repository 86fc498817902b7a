"""DiffShapes: a synthetic image world with exact ground truth.

Every image shows one *primary* object (and optionally up to two smaller
*secondary* objects behind it) on a low-contrast background.  The primary
object has a known shape, palette colour and fill texture, and the generator
returns its anti-aliased coverage mask, its exact edge map, its texture
frequency and orientation and its colour, so that every feature the toolkit
measures (shape, edges, texture, colour) has a ground truth.

The joint condition ``(shape, color, texture)`` of the primary object is the
class label of the toy diffusion model: ``5 * 6 * 4 = 120`` classes, plus
:data:`NULL_LABEL` for the unconditional (classifier-free) class.

Everything is pure numpy and vectorised over the batch; image ``i`` of
``generate(n, seed=s)`` depends only on ``(s, i)``, never on ``n``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np

__all__ = [
    "SHAPES",
    "TEXTURES",
    "PALETTE",
    "COLORS",
    "NUM_CONDITIONS",
    "NULL_LABEL",
    "MAX_OBJECTS",
    "DiffShapesObjects",
    "DiffShapesBatch",
    "condition_label",
    "condition_names",
    "shape_area",
    "generate",
    "render",
    "FACTORS",
    "SOFT_EDGE_WIDTH",
    "counterfactual_pairs",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots")
#: Six saturated colours, roughly 60 degrees apart in CIELAB hue (yellow and
#: orange are the closest pair) and far from the grey-ish backgrounds.
PALETTE = MappingProxyType(
    {
        "red": (0.86, 0.10, 0.12),
        "orange": (0.98, 0.52, 0.04),
        "yellow": (0.96, 0.90, 0.12),
        "green": (0.12, 0.68, 0.20),
        "blue": (0.12, 0.30, 0.92),
        "purple": (0.62, 0.16, 0.82),
    }
)
COLORS: tuple[str, ...] = tuple(PALETTE)
NUM_CONDITIONS: int = len(SHAPES) * len(COLORS) * len(TEXTURES)
NULL_LABEL: int = NUM_CONDITIONS
MAX_OBJECTS: int = 3

_PALETTE_RGB = np.asarray(list(PALETTE.values()), dtype=np.float32)
# The dark phase of a texture is the palette colour times this factor: same
# hue, lower lightness, so the dominant colour stays the palette colour.
_TEXTURE_DARKEN = 0.5

# Object sizes as fractions of the image size (circumradius).
_PRIMARY_RADIUS = (0.22, 0.38)
_SECONDARY_RADIUS = (0.12, 0.20)
# Texture periods in pixels at the reference size of 32 px; they scale with
# the image so that a 64 px image is a finer rendering of the same scene.
_REFERENCE_SIZE = 32
_STRIPE_FREQUENCY = (0.125, 0.25)  # cycles/pixel
_CHECKER_PERIOD = (6.0, 10.0)  # pixels per full cycle (two squares)
_DOT_PERIOD = (5.0, 8.0)  # pixels between dot centres
_DOT_RADIUS = 0.28  # fraction of the dot period

# Layout of the uniform numbers drawn for each image: one vector per image,
# fixed slots, so that restricting names or fixing labels never shifts the
# other draws.
_BACKGROUND_SLOTS = 24
_NOISE_GRID = 4
_OBJECT_SLOTS = 12
_N_UNIFORMS = _BACKGROUND_SLOTS + MAX_OBJECTS * _OBJECT_SLOTS

#: The factors :func:`counterfactual_pairs` changes one at a time.
FACTORS: tuple[str, ...] = (
    "shape", "color", "texture_kind", "texture_orientation", "texture_frequency", "position", "edge_sharpness",
)
#: Width of the soft boundary's coverage ramp at the reference size (pixels; scales with the image).
SOFT_EDGE_WIDTH = 2.5


def _regular_star(points: int, inner: float) -> np.ndarray:
    angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(half_width: float) -> np.ndarray:
    a, w = np.sqrt(1.0 - half_width**2), half_width
    return np.array(
        [[a, -w], [a, w], [w, w], [w, a], [-w, a], [-w, w],
         [-a, w], [-a, -w], [-w, -w], [-w, -a], [w, -a], [w, -w]]
    )


# Polygon vertices in units of the circumradius (counter-clockwise); ``None``
# marks the circle.
_POLYGONS: dict[str, np.ndarray | None] = {
    "circle": None,
    "square": np.sqrt(0.5) * np.array([[1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0]]),  # axis-aligned
    "triangle": _regular_star(3, 1.0)[::2],
    "star": _regular_star(5, 0.45),
    "cross": _cross(0.33),
}


def _polygon_area(vertices: np.ndarray) -> float:
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def shape_area(shape: str, radius: float) -> float:
    """Exact area of a shape with a given circumradius.

    Parameters
    ----------
    shape : str
        One of :data:`SHAPES`.
    radius : float
        Circumradius in pixels (the ``radius`` stored in :class:`DiffShapesObjects`).

    Returns
    -------
    float
        Area in square pixels.
    """
    vertices = _POLYGONS[SHAPES[_index(shape, SHAPES, "shape")]]
    if vertices is None:
        return float(np.pi * radius**2)
    return _polygon_area(vertices) * radius**2


def _index(name: str, valid: Sequence[str], kind: str) -> int:
    try:
        return list(valid).index(name)
    except ValueError:
        raise ValueError(f"unknown {kind} {name!r}; valid {kind}s are {', '.join(valid)}") from None


def condition_label(shape: str, color: str, texture: str) -> int:
    """Joint class index of a ``(shape, color, texture)`` condition.

    Parameters
    ----------
    shape : str
        One of :data:`SHAPES`.
    color : str
        One of :data:`COLORS`.
    texture : str
        One of :data:`TEXTURES`.

    Returns
    -------
    int
        ``(shape_index * len(COLORS) + color_index) * len(TEXTURES) + texture_index``,
        in ``[0, NUM_CONDITIONS)``.

    Raises
    ------
    ValueError
        If a name is unknown; the message lists the valid names.
    """
    s = _index(shape, SHAPES, "shape")
    c = _index(color, COLORS, "color")
    t = _index(texture, TEXTURES, "texture")
    return (s * len(COLORS) + c) * len(TEXTURES) + t


def condition_names(label: int) -> tuple[str, str, str]:
    """Names ``(shape, color, texture)`` of a joint class index.

    Parameters
    ----------
    label : int
        Joint label in ``[0, NUM_CONDITIONS)``.

    Returns
    -------
    tuple of str
        ``(shape, color, texture)``.

    Raises
    ------
    ValueError
        If ``label`` is out of range (including :data:`NULL_LABEL`).
    """
    shape_index, color_index, texture_index = _split_labels(np.asarray([label]))
    return SHAPES[shape_index[0]], COLORS[color_index[0]], TEXTURES[texture_index[0]]


def _split_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CONDITIONS):
        raise ValueError(f"labels must lie in [0, {NUM_CONDITIONS}); got range [{labels.min()}, {labels.max()}]")
    texture = labels % len(TEXTURES)
    color = (labels // len(TEXTURES)) % len(COLORS)
    shape = labels // (len(TEXTURES) * len(COLORS))
    return shape.astype(np.int64), color.astype(np.int64), texture.astype(np.int64)


@dataclass(frozen=True, eq=False)
class DiffShapesObjects:
    """Parameters of every object in a batch, padded to :data:`MAX_OBJECTS`.

    Object ``0`` is the primary object; objects ``1 .. count-1`` are secondary
    objects.  They are drawn from the last to the first, so the primary object
    is on top and never occluded.  Padding entries have ``shape == -1``.

    Attributes
    ----------
    count : ndarray of int, shape (n,)
        Number of objects in each image (1 to 3).
    shape, color, texture : ndarray of int, shape (n, 3)
        Indices into :data:`SHAPES`, :data:`COLORS`, :data:`TEXTURES`; -1 for padding.
    center : ndarray of float, shape (n, 3, 2)
        Centre ``(x, y)`` in pixels (pixel ``(row, col)`` has its centre at ``(col, row)``).
    radius : ndarray of float, shape (n, 3)
        Circumradius in pixels.
    rotation : ndarray of float, shape (n, 3)
        Rotation of the shape in radians (counter-clockwise in ``(x, y)``).
    texture_frequency : ndarray of float, shape (n, 3)
        Spatial frequency of the texture in cycles/pixel (0 for solid).
    texture_orientation : ndarray of float, shape (n, 3)
        Orientation of the texture's wave vector in radians.
    texture_phase : ndarray of float, shape (n, 3, 2)
        Phase of the texture along and across its wave vector, in cycles; the
        texture is fixed in image coordinates (moving an object shows another
        part of the same texture).
    edge_width : ndarray of float, shape (n, 3)
        Width in pixels of the boundary's coverage ramp, ``clip(0.5 - sdf / w, 0, 1)``:
        1 is the normal anti-aliased (sharp) boundary, larger values a soft one.

    Notes
    -----
    Edit a copy with :func:`dataclasses.replace` (copy the arrays you change)
    and draw it again with :func:`render`.
    """

    count: np.ndarray
    shape: np.ndarray
    color: np.ndarray
    texture: np.ndarray
    center: np.ndarray
    radius: np.ndarray
    rotation: np.ndarray
    texture_frequency: np.ndarray
    texture_orientation: np.ndarray
    texture_phase: np.ndarray
    edge_width: np.ndarray


@dataclass(frozen=True, eq=False)
class DiffShapesBatch:
    """A batch of DiffShapes images with the ground truth of the primary object.

    Attributes
    ----------
    images : ndarray of float32, shape (n, 3, H, W)
        RGB images in ``[0, 1]``.
    shape, color, texture : ndarray of int, shape (n,)
        Indices into :data:`SHAPES`, :data:`COLORS`, :data:`TEXTURES`.
    label : ndarray of int, shape (n,)
        Joint label, see :func:`condition_label`.
    mask : ndarray of float32, shape (n, H, W)
        Anti-aliased coverage of the primary object in ``[0, 1]``.
    edges : ndarray of bool, shape (n, H, W)
        Pixels that the primary object's boundary passes through.
    texture_frequency : ndarray of float, shape (n,)
        Texture frequency in cycles/pixel (0 for solid): the stripe frequency,
        or one over the checker or dot-grid period.
    texture_orientation : ndarray of float, shape (n,)
        Orientation of the texture's wave vector in radians (0 for solid).
    dominant_color : ndarray of float32, shape (n, 3)
        RGB of the primary object's palette colour.
    objects : DiffShapesObjects
        Parameters of all objects, the primary one first.
    """

    images: np.ndarray
    shape: np.ndarray
    color: np.ndarray
    texture: np.ndarray
    label: np.ndarray
    mask: np.ndarray
    edges: np.ndarray
    texture_frequency: np.ndarray
    texture_orientation: np.ndarray
    dominant_color: np.ndarray
    objects: DiffShapesObjects

    @property
    def binary_mask(self) -> np.ndarray:
        """Boolean mask of the primary object, ``mask > 0.5``, shape (n, H, W)."""
        return self.mask > 0.5

    def __len__(self) -> int:
        return self.images.shape[0]


def _allowed_indices(names: Sequence[str] | None, valid: Sequence[str], kind: str) -> np.ndarray:
    if names is None:
        return np.arange(len(valid))
    if isinstance(names, str):
        raise TypeError(f"{kind}s must be a sequence of names, not the string {names!r}")
    if len(names) == 0:
        raise ValueError(f"{kind}s must name at least one {kind}")
    return np.asarray([_index(name, valid, kind) for name in names])


def _pick(allowed: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    return allowed[np.minimum((uniform * len(allowed)).astype(np.int64), len(allowed) - 1)]


def _lerp(low_high: tuple[float, float], uniform: np.ndarray) -> np.ndarray:
    return low_high[0] + (low_high[1] - low_high[0]) * uniform


def _polygon_sdf(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Exact signed distance to a polygon (negative inside), vectorised over points."""
    distance_sq = np.full(x.shape, np.inf, dtype=x.dtype)
    inside = np.zeros(x.shape, dtype=bool)
    for i in range(len(vertices)):
        vx, vy = vertices[i]
        wx_, wy_ = vertices[i - 1]
        ex, ey = wx_ - vx, wy_ - vy
        px, py = x - vx, y - vy
        # Closest point of the edge: v + e * clip(<p, e> / |e|^2, 0, 1).
        t = px * (ex / (ex * ex + ey * ey)) + py * (ey / (ex * ex + ey * ey))
        np.clip(t, 0.0, 1.0, out=t)
        bx, by = px - ex * t, py - ey * t
        np.minimum(distance_sq, bx * bx + by * by, out=distance_sq)
        # Crossing-number parity (a point is inside iff a horizontal ray from
        # it crosses an odd number of edges).
        above_start = y >= vy
        left = ex * py > ey * px
        inside ^= (above_start == (y < wy_)) & (left == above_start)
    distance = np.sqrt(distance_sq)
    return np.where(inside, -distance, distance)


def _shape_sdf(
    shape_index: np.ndarray,
    center: np.ndarray,
    radius: np.ndarray,
    rotation: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
) -> np.ndarray:
    """Signed distance in pixels to each image's object, shape (m, len(ys), len(xs)).

    Exact (negative inside) within a square crop holding the object's
    circumscribed circle plus a margin of at least one pixel; outside the crop,
    where every point is outside that circle, the distance to the circle (a
    positive lower bound) is returned, so that polygons cost a crop, not an image.
    """
    out = np.empty((len(shape_index), len(ys), len(xs)), dtype=np.float32)
    for s, name in enumerate(SHAPES):
        rows = np.flatnonzero(shape_index == s)
        if rows.size == 0:
            continue
        r = radius[rows].astype(np.float32)
        cx = center[rows, 0].astype(np.float32)
        cy = center[rows, 1].astype(np.float32)
        cos = np.cos(rotation[rows]).astype(np.float32)[:, None, None]
        sin = np.sin(rotation[rows]).astype(np.float32)[:, None, None]
        # Distance to the circumscribed circle on the whole grid.
        dx = xs[None, None, :] - cx[:, None, None]
        dy = ys[None, :, None] - cy[:, None, None]
        out[rows] = np.sqrt(dx * dx + dy * dy) - r[:, None, None]
        vertices = _POLYGONS[name]
        if vertices is None:
            continue
        crop = min(len(xs), len(ys), int(np.ceil(2 * r.max())) + 5)
        ix = np.clip(np.round(cx - r - xs[0]).astype(np.int64) - 2, 0, len(xs) - crop)[:, None] + np.arange(crop)
        iy = np.clip(np.round(cy - r - ys[0]).astype(np.int64) - 2, 0, len(ys) - crop)[:, None] + np.arange(crop)
        dx = xs[ix][:, None, :] - cx[:, None, None]
        dy = ys[iy][:, :, None] - cy[:, None, None]
        # Rotate the point into the object frame and scale to unit circumradius.
        u = (cos * dx + sin * dy) / r[:, None, None]
        v = (-sin * dx + cos * dy) / r[:, None, None]
        unit_sdf = _polygon_sdf(u, v, vertices.astype(np.float32))
        out[rows[:, None, None], iy[:, :, None], ix[:, None, :]] = unit_sdf * r[:, None, None]
    return out


def _texture_pattern(
    texture_index: np.ndarray,
    frequency: np.ndarray,
    orientation: np.ndarray,
    phase: np.ndarray,
    size: int,
) -> np.ndarray:
    """Dark-phase weight in [0, 1] of each image's texture, shape (m, size, size)."""
    pattern = np.zeros((len(texture_index), size, size), dtype=np.float32)
    coords = np.arange(size, dtype=np.float32)
    for t, name in enumerate(TEXTURES):
        rows = np.flatnonzero(texture_index == t)
        if rows.size == 0 or name == "solid":
            continue
        f = frequency[rows, None, None].astype(np.float32)
        cos = np.cos(orientation[rows])[:, None, None].astype(np.float32)
        sin = np.sin(orientation[rows])[:, None, None].astype(np.float32)
        x, y = coords[None, None, :], coords[None, :, None]
        # (u, v): pixel coordinates along and across the wave vector, in cycles.
        u = (cos * x + sin * y) * f + phase[rows, 0, None, None].astype(np.float32)
        v = (-sin * x + cos * y) * f + phase[rows, 1, None, None].astype(np.float32)
        if name == "stripes":
            # A softened square wave: fundamental exactly at ``f``.
            values = 0.5 + 2.0 * np.sin(2 * np.pi * u)
        elif name == "checker":
            values = 0.5 + 3.0 * np.sin(2 * np.pi * u) * np.sin(2 * np.pi * v)
        else:  # dots: an anti-aliased disc around every grid point
            du = (u - np.round(u)) / f
            dv = (v - np.round(v)) / f
            values = 0.5 - (np.sqrt(du * du + dv * dv) - _DOT_RADIUS / f)
        pattern[rows] = np.clip(values, 0.0, 1.0)
    return pattern


def _background(uniforms: np.ndarray, size: int) -> np.ndarray:
    """Low-contrast grey-ish background: flat, linear gradient or smooth noise."""
    n = len(uniforms)
    kind = np.minimum((uniforms[:, 0] * 3).astype(np.int64), 2)
    level = _lerp((0.38, 0.62), uniforms[:, 1])
    tint = (uniforms[:, 2:5] - 0.5) * 0.06  # at most +-0.03 per channel: stays grey
    base = (level[:, None] + tint).astype(np.float32)

    offset = np.zeros((n, size, size), dtype=np.float32)
    coords = ((np.arange(size) + 0.5) / size - 0.5).astype(np.float32)
    gradient_rows = np.flatnonzero(kind == 1)
    angle = 2 * np.pi * uniforms[gradient_rows, 5]
    amplitude = _lerp((0.05, 0.15), uniforms[gradient_rows, 6])
    offset[gradient_rows] = (amplitude * np.cos(angle)).astype(np.float32)[:, None, None] * coords[None, None, :] + (
        amplitude * np.sin(angle)
    ).astype(np.float32)[:, None, None] * coords[None, :, None]
    # Smooth noise: a 4x4 grid of values, bilinearly interpolated to the image.
    noise_rows = np.flatnonzero(kind == 2)
    grid = (uniforms[noise_rows, 8 : 8 + _NOISE_GRID**2].reshape(-1, _NOISE_GRID, _NOISE_GRID) - 0.5) * 0.16
    knots = np.linspace(0.0, 1.0, _NOISE_GRID)
    positions = (np.arange(size) + 0.5) / size
    interpolation = np.stack([np.interp(positions, knots, np.eye(_NOISE_GRID)[k]) for k in range(_NOISE_GRID)], axis=1)
    offset[noise_rows] = interpolation @ grid @ interpolation.T

    return base[:, :, None, None] + offset[:, None]


def generate(
    n: int,
    *,
    seed: int,
    size: int = 32,
    n_objects: int | tuple[int, int] = 1,
    shapes: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    textures: Sequence[str] | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    background: float | None = None,
    radius: tuple[float, float] | None = None,
    max_rotation: float | None = None,
) -> DiffShapesBatch:
    """Generate a batch of DiffShapes images with their ground truth.

    Parameters
    ----------
    n : int
        Number of images.
    seed : int
        Non-negative seed; image ``i`` is a function of ``(seed, i)`` only (and of the
        options), so the first images of ``generate(400, seed=s)`` equal those
        of ``generate(4, seed=s)``.
    size : int, optional
        Height and width in pixels (at least 16).  Object sizes and texture
        periods scale with it (texture periods are given at 32 px).
    n_objects : int or (int, int), optional
        Number of objects per image, or an inclusive ``(min, max)`` range drawn
        uniformly; at most :data:`MAX_OBJECTS`.  Object 0 is the primary one.
    shapes, colors, textures : sequence of str, optional
        Restrict the primary object's attributes to these names (drawn
        uniformly among them).  Secondary objects are unrestricted.
    labels : array_like of int, optional
        One joint label per image fixing the primary object's shape, colour
        and texture; excludes ``shapes``, ``colors`` and ``textures``.
    background : float, optional
        If given, a flat grey background of this level in ``[0, 1]`` instead
        of the random low-contrast background.
    radius : (float, float), optional
        Range of the primary object's circumradius as a fraction of ``size``
        (default ``(0.22, 0.38)``); at most 0.45 so that it fits.
    max_rotation : float, optional
        If given, rotations are drawn uniformly in ``[-max_rotation, max_rotation]``
        degrees around the upright pose (square axis-aligned, cross ``+``,
        triangle and star with a vertex up) instead of uniformly over the circle.

    Returns
    -------
    DiffShapesBatch
        Images and ground truth.

    Raises
    ------
    ValueError
        For unknown names (the message lists the valid ones), labels out of
        range, or invalid ``n``, ``size`` or ``n_objects``.

    Notes
    -----
    Shapes are rendered from exact signed distance functions ``d`` (pixel
    units, negative inside) with coverage ``clip(0.5 - d, 0, 1)``, i.e.
    anti-aliased edges.  Textures modulate the object's palette colour between
    the colour and a darker version of it (same hue).  The edge map marks the
    pixels whose square contains both inside and outside points: the SDF
    changes sign between the pixel's centre and four corners, or the boundary
    is closer than half a pixel to the centre.  Only sub-pixel features that
    satisfy neither (a star tip grazing a pixel) can be missed.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    low, high = (n_objects, n_objects) if np.isscalar(n_objects) else tuple(n_objects)
    if not 1 <= low <= high <= MAX_OBJECTS:
        raise ValueError(f"n_objects must lie in [1, {MAX_OBJECTS}] (or be such a range), got {n_objects!r}")
    if labels is not None and (shapes is not None or colors is not None or textures is not None):
        raise ValueError("pass either labels or shapes/colors/textures, not both")
    if background is not None and not 0.0 <= background <= 1.0:
        raise ValueError(f"background must lie in [0, 1], got {background}")
    primary_radius = _PRIMARY_RADIUS if radius is None else tuple(float(r) for r in radius)
    if len(primary_radius) != 2 or not 0.05 <= primary_radius[0] <= primary_radius[1] <= 0.45:
        raise ValueError(f"radius must be a (low, high) range within [0.05, 0.45], got {radius!r}")
    if max_rotation is not None and not 0.0 <= max_rotation <= 180.0:
        raise ValueError(f"max_rotation must lie in [0, 180] degrees, got {max_rotation}")
    allowed_shapes = _allowed_indices(shapes, SHAPES, "shape")
    allowed_colors = _allowed_indices(colors, COLORS, "color")
    allowed_textures = _allowed_indices(textures, TEXTURES, "texture")

    # One independent stream per image: image i never depends on n.
    uniforms = np.stack(
        [np.random.default_rng([seed, i]).random(_N_UNIFORMS) for i in range(n)]
    ) if n else np.zeros((0, _N_UNIFORMS))

    count = low + np.minimum((uniforms[:, 7] * (high - low + 1)).astype(np.int64), high - low)
    scale = size / _REFERENCE_SIZE
    obj = uniforms[:, _BACKGROUND_SLOTS:].reshape(n, MAX_OBJECTS, _OBJECT_SLOTS)
    shape = _pick(np.arange(len(SHAPES)), obj[..., 0])
    color = _pick(np.arange(len(COLORS)), obj[..., 1])
    texture = _pick(np.arange(len(TEXTURES)), obj[..., 2])
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
        shape[:, 0], color[:, 0], texture[:, 0] = _split_labels(labels)
    else:
        shape[:, 0] = _pick(allowed_shapes, obj[:, 0, 0])
        color[:, 0] = _pick(allowed_colors, obj[:, 0, 1])
        texture[:, 0] = _pick(allowed_textures, obj[:, 0, 2])
    radius = np.concatenate(
        [_lerp(primary_radius, obj[:, :1, 3]), _lerp(_SECONDARY_RADIUS, obj[:, 1:, 3])], axis=1
    ) * size
    # Keep each object inside the image (its circumscribed circle, plus half a pixel).
    margin = radius + 0.5
    center = np.stack(
        [margin + obj[..., k] * (size - 1 - 2 * margin) for k in (4, 5)], axis=-1
    )
    if max_rotation is None:
        rotation = 2 * np.pi * obj[..., 6]
    else:
        rotation = np.deg2rad(max_rotation) * (2 * obj[..., 6] - 1)
    frequency = np.select(
        [texture == 1, texture == 2, texture == 3],
        [_lerp(_STRIPE_FREQUENCY, obj[..., 7]), 1.0 / _lerp(_CHECKER_PERIOD, obj[..., 7]),
         1.0 / _lerp(_DOT_PERIOD, obj[..., 7])],
        default=0.0,
    ) / scale
    orientation = np.where(texture == 1, np.pi * obj[..., 8], 0.5 * np.pi * obj[..., 8]) * (texture > 0)
    phase = obj[..., 9:11]
    active = np.arange(MAX_OBJECTS)[None, :] < count[:, None]
    for field in (shape, color, texture):
        field[~active] = -1
    for field in (radius, rotation, frequency, orientation):
        field[~active] = 0.0
    center[~active] = 0.0

    if background is None:
        images = _background(uniforms, size)
    else:
        images = np.full((n, 3, size, size), background, dtype=np.float32)
    objects = DiffShapesObjects(
        count=count, shape=shape, color=color, texture=texture, center=center, radius=radius,
        rotation=rotation, texture_frequency=frequency, texture_orientation=orientation,
        texture_phase=phase, edge_width=np.ones_like(radius),
    )
    return render(objects, background=images)


def _check_objects(objects: DiffShapesObjects, n: int) -> None:
    expected = {
        "count": (n,), "shape": (n, MAX_OBJECTS), "color": (n, MAX_OBJECTS), "texture": (n, MAX_OBJECTS),
        "center": (n, MAX_OBJECTS, 2), "radius": (n, MAX_OBJECTS), "rotation": (n, MAX_OBJECTS),
        "texture_frequency": (n, MAX_OBJECTS), "texture_orientation": (n, MAX_OBJECTS),
        "texture_phase": (n, MAX_OBJECTS, 2), "edge_width": (n, MAX_OBJECTS),
    }
    for name, shape in expected.items():
        value = np.asarray(getattr(objects, name))
        if value.shape != shape:
            raise ValueError(f"objects.{name} must have shape {shape} for {n} images, got {value.shape}")
    active = np.arange(MAX_OBJECTS)[None, :] < np.asarray(objects.count)[:, None]
    if not np.all((objects.count >= 1) & (objects.count <= MAX_OBJECTS)):
        raise ValueError(f"objects.count must lie in [1, {MAX_OBJECTS}]")
    if not (np.isfinite(objects.edge_width[active]).all() and (objects.edge_width[active] >= 1.0).all()):
        raise ValueError("objects.edge_width must be finite and at least 1 pixel for active objects")
    for name, valid in (("shape", SHAPES), ("color", COLORS), ("texture", TEXTURES)):
        values = np.asarray(getattr(objects, name))[active]
        if values.size and (values.min() < 0 or values.max() >= len(valid)):
            raise ValueError(f"objects.{name} must index {name}s in [0, {len(valid)}) for active objects")


def render(objects: DiffShapesObjects, *, background) -> DiffShapesBatch:
    """Draw a parameter set of objects on given backgrounds.

    :func:`generate` is ``render(objects, background=...)`` of the objects it
    draws; edit a batch's ``objects`` with :func:`dataclasses.replace` and
    render it again on the same background to change one factor of a scene
    (see :func:`counterfactual_pairs`).

    Parameters
    ----------
    objects : DiffShapesObjects
        The objects of ``n`` images, the primary one first.
    background : array_like, shape (n, 3, size, size)
        The background of every image, RGB in ``[0, 1]``.

    Returns
    -------
    DiffShapesBatch
        Images and the ground truth of the primary objects.

    Raises
    ------
    ValueError
        If the background is not ``(n, 3, size, size)`` in ``[0, 1]`` with
        ``size >= 16``, or an object field has the wrong shape or an invalid value.
    """
    background = np.asarray(background)
    if background.ndim != 4 or background.shape[1] != 3 or background.shape[2] != background.shape[3]:
        raise ValueError(f"background must have shape (n, 3, size, size), got {background.shape}")
    n, _, size, _ = background.shape
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if not np.isfinite(background).all() or (n and (background.min() < 0.0 or background.max() > 1.0)):
        raise ValueError("background must be finite and lie in [0, 1]")
    _check_objects(objects, n)
    count, shape, color, texture = objects.count, objects.shape, objects.color, objects.texture
    center, radius, rotation = objects.center, objects.radius, objects.rotation
    frequency, orientation, phase = objects.texture_frequency, objects.texture_orientation, objects.texture_phase
    width = objects.edge_width
    active = np.arange(MAX_OBJECTS)[None, :] < count[:, None]
    images = background.astype(np.float32, copy=True)

    pixel_centers = np.arange(size, dtype=np.float32)
    mask = np.zeros((n, size, size), dtype=np.float32)
    primary_sdf = np.zeros((n, size, size), dtype=np.float32)
    for k in reversed(range(MAX_OBJECTS)):  # back to front: the primary object last
        rows = np.flatnonzero(active[:, k])
        if rows.size == 0:
            continue
        sdf = _shape_sdf(shape[rows, k], center[rows, k], radius[rows, k], rotation[rows, k],
                         pixel_centers, pixel_centers)
        # Coverage ramp of width w px across the boundary (w = 1: anti-aliased; x / 1.0 == x exactly).
        w = width[rows, k].astype(np.float32)[:, None, None]
        coverage = np.clip(0.5 - sdf / w, 0.0, 1.0)
        pattern = _texture_pattern(texture[rows, k], frequency[rows, k], orientation[rows, k], phase[rows, k], size)
        rgb = _PALETTE_RGB[color[rows, k]][:, :, None, None]
        fill = rgb * (1.0 - (1.0 - _TEXTURE_DARKEN) * pattern[:, None])
        images[rows] = images[rows] * (1.0 - coverage[:, None]) + fill * coverage[:, None]
        if k == 0:
            mask[rows] = coverage
            primary_sdf[rows] = sdf

    # Edge map: the boundary crosses a pixel iff the pixel's square holds both
    # signs of the SDF; test the centre and the four corners, and the
    # distance from the centre (exact SDF: |d| < 0.5 means a crossing).
    if n:
        pixel_corners = np.arange(size + 1, dtype=np.float32) - 0.5
        corner_sdf = _shape_sdf(shape[:, 0], center[:, 0], radius[:, 0], rotation[:, 0], pixel_corners, pixel_corners)
        corner_inside = np.stack(
            [corner_sdf[:, :-1, :-1], corner_sdf[:, :-1, 1:], corner_sdf[:, 1:, :-1], corner_sdf[:, 1:, 1:],
             primary_sdf]
        ) < 0
        # A boundary closer than 0.5 px to the centre lies inside the pixel too.
        edges = (corner_inside.any(axis=0) & ~corner_inside.all(axis=0)) | (np.abs(primary_sdf) < 0.5)
    else:
        edges = np.zeros((0, size, size), dtype=bool)

    primary_shape, primary_color, primary_texture = shape[:, 0].copy(), color[:, 0].copy(), texture[:, 0].copy()
    return DiffShapesBatch(
        images=np.clip(images, 0.0, 1.0),
        shape=primary_shape,
        color=primary_color,
        texture=primary_texture,
        label=(primary_shape * len(COLORS) + primary_color) * len(TEXTURES) + primary_texture,
        mask=mask,
        edges=edges,
        texture_frequency=frequency[:, 0].copy(),
        texture_orientation=orientation[:, 0].copy(),
        dominant_color=_PALETTE_RGB[primary_color],
        objects=objects,
    )


def _texture_frequency(texture: np.ndarray, uniform: np.ndarray, scale: float) -> np.ndarray:
    """Texture frequency (cycles/pixel) of each texture index, from one uniform number (0 for solid)."""
    return np.select(
        [texture == 1, texture == 2, texture == 3],
        [_lerp(_STRIPE_FREQUENCY, uniform), 1.0 / _lerp(_CHECKER_PERIOD, uniform), 1.0 / _lerp(_DOT_PERIOD, uniform)],
        default=0.0,
    ) / scale


def _other(current: np.ndarray, k: int, rng: np.random.Generator, choices: np.ndarray | None = None) -> np.ndarray:
    """A value different from ``current`` (uniform over the others among ``choices``, default ``range(k)``)."""
    choices = np.arange(k) if choices is None else choices
    out = np.empty_like(current)
    for i, c in enumerate(current):
        others = choices[choices != c]
        out[i] = others[rng.integers(len(others))]
    return out


def counterfactual_pairs(
    n: int,
    *,
    factor: str,
    seed: int,
    size: int = 32,
    background: float | None = None,
    soft_edge_width: float = SOFT_EDGE_WIDTH,
) -> tuple[DiffShapesBatch, DiffShapesBatch]:
    """Pairs of one-object images that differ in exactly one factor.

    Parameters
    ----------
    n : int
        Number of pairs.
    factor : str
        One of :data:`FACTORS`:

        ``"shape"``
            another shape (same centre, circumradius, rotation, colour, texture);
        ``"color"``
            another palette colour;
        ``"texture_kind"``
            another texture among :data:`TEXTURES` (a new texture gets a
            frequency and orientation drawn from the generator's ranges);
        ``"texture_orientation"``
            the texture rotated by 60 to 100 % of its half symmetry period
            (54 to 90 degrees for stripes, 27 to 45 degrees for checkers and
            dot grids); textured objects only;
        ``"texture_frequency"``
            the texture frequency times or divided by 1.4 to 1.7 (towards the
            middle of the generator's range); textured objects only;
        ``"position"``
            the object moved, staying inside the image (the farthest of 16
            candidate centres drawn like the generator's);
        ``"edge_sharpness"``
            the first image has the normal anti-aliased boundary, the second a
            soft one (coverage ramp ``clip(0.5 - sdf / w, 0, 1)`` of width
            ``w = soft_edge_width * size / 32`` px).
    seed : int
        Non-negative seed; the first images are those of
        ``generate(n, seed=seed, size=size, n_objects=1, background=background)``
        (restricted to textured objects for the two texture factors).
    size : int, optional
        Height and width in pixels (at least 16).
    background : float, optional
        A flat grey background level in ``[0, 1]`` instead of the random
        low-contrast backgrounds.
    soft_edge_width : float, optional
        Width of the soft boundary at the 32 px reference size, in pixels
        (more than 1); it scales with ``size``.

    Returns
    -------
    (DiffShapesBatch, DiffShapesBatch)
        ``(a, b)``: ``b[i]`` is ``a[i]`` with ``factor`` changed; everything
        else (background, the other parameters, the texture's phase) is identical.

    Raises
    ------
    ValueError
        For an unknown factor (the message lists them), or invalid ``n``,
        ``seed``, ``size``, ``background`` or ``soft_edge_width``.

    Notes
    -----
    Both images are drawn by :func:`render` from the same
    :class:`DiffShapesObjects`, one field edited with
    :func:`dataclasses.replace`.  The changed values are drawn from a stream
    seeded by ``(seed, factor)``, so pairs are reproducible.
    """
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; valid factors are {', '.join(FACTORS)}")
    if not (np.isfinite(soft_edge_width) and soft_edge_width > 1.0):
        raise ValueError(f"soft_edge_width must be a finite number of pixels above 1, got {soft_edge_width}")
    textured = factor in ("texture_orientation", "texture_frequency")
    a = generate(n, seed=seed, size=size, n_objects=1, background=background,
                 textures=TEXTURES[1:] if textured else None)
    o = a.objects
    rng = np.random.default_rng([seed, FACTORS.index(factor), 7919])
    scale = size / _REFERENCE_SIZE
    # The background of a one-object image is the image where the object's coverage is 0;
    # rebuild it exactly from the generator's draw.
    if background is None:
        uniforms = np.stack([np.random.default_rng([seed, i]).random(_N_UNIFORMS) for i in range(n)]) \
            if n else np.zeros((0, _N_UNIFORMS))
        ground = _background(uniforms, size)
    else:
        ground = np.full((n, 3, size, size), background, dtype=np.float32)

    def column(field: np.ndarray, values: np.ndarray) -> np.ndarray:
        out = field.copy()
        out[:, 0] = values
        return out

    if factor == "shape":
        edited = replace(o, shape=column(o.shape, _other(o.shape[:, 0], len(SHAPES), rng)))
    elif factor == "color":
        edited = replace(o, color=column(o.color, _other(o.color[:, 0], len(COLORS), rng)))
    elif factor == "texture_kind":
        kind = _other(o.texture[:, 0], len(TEXTURES), rng)
        frequency = _texture_frequency(kind, rng.random(n), scale)
        orientation = np.where(kind == 1, np.pi, 0.5 * np.pi) * rng.random(n) * (kind > 0)
        # A kind that keeps being textured keeps its frequency and orientation where both are textured.
        both = (kind > 0) & (o.texture[:, 0] > 0)
        frequency = np.where(both, o.texture_frequency[:, 0], frequency)
        orientation = np.where(both, o.texture_orientation[:, 0], orientation)
        edited = replace(o, texture=column(o.texture, kind), texture_frequency=column(o.texture_frequency, frequency),
                         texture_orientation=column(o.texture_orientation, orientation))
    elif factor == "texture_orientation":
        period = np.where(o.texture[:, 0] == 1, np.pi, 0.5 * np.pi)
        turn = 0.5 * period * rng.uniform(0.6, 1.0, n) * rng.choice([-1.0, 1.0], n)
        edited = replace(o, texture_orientation=column(o.texture_orientation,
                                                       np.mod(o.texture_orientation[:, 0] + turn, period)))
    elif factor == "texture_frequency":
        f = o.texture_frequency[:, 0]
        middle = np.sqrt(_texture_frequency(o.texture[:, 0], np.zeros(n), scale)
                         * _texture_frequency(o.texture[:, 0], np.ones(n), scale))
        ratio = rng.uniform(1.4, 1.7, n)
        edited = replace(o, texture_frequency=column(o.texture_frequency, np.where(f < middle, f * ratio, f / ratio)))
    elif factor == "position":
        margin = o.radius[:, 0] + 0.5
        candidates = margin[:, None, None] + rng.random((n, 16, 2)) * (size - 1 - 2 * margin)[:, None, None]
        far = np.argmax(np.linalg.norm(candidates - o.center[:, None, 0], axis=-1), axis=1)
        center = o.center.copy()
        center[:, 0] = candidates[np.arange(n), far]
        edited = replace(o, center=center)
    else:  # edge_sharpness
        edited = replace(o, edge_width=column(o.edge_width, np.full(n, soft_edge_width * scale)))
    return render(o, background=ground), render(edited, background=ground)
