"""Inpainting masks: free-form brush strokes for training, four checkerboards to start detection.

Masks are float32 `(1, H, W)` (or `(4, 1, H, W)`) with 1 = hole (pixel to inpaint) and 0 = known.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from i3ad.errors import ConfigError

# Brush-stroke settings of Yu et al. 2019 (DeepFill v2, `brush_stroke_mask`), given for 256 x 256 images;
# lengths and widths are scaled with the image size.
MIN_STROKES, MAX_STROKES = 1, 3
MIN_VERTICES, MAX_VERTICES = 4, 12
MEAN_ANGLE = 2 * math.pi / 5
ANGLE_RANGE = 2 * math.pi / 15
MIN_BRUSH_WIDTH, MAX_BRUSH_WIDTH = 12, 40  # pixels at 256 x 256
REFERENCE_SIZE = 256

# Boxes are unioned with the strokes, as DeepFill v2 trains on both; each side is this fraction of the image.
MIN_BOXES, MAX_BOXES = 1, 2
MIN_BOX_SIDE, MAX_BOX_SIDE = 1 / 8, 3 / 8

# Every training mask hides between these fractions of the image (strokes are added or redrawn to get there).
MIN_HOLE_RATIO, MAX_HOLE_RATIO = 0.10, 0.50
_MAX_STROKE_TRIES = 100


def _draw_stroke(canvas: Image.Image, rng: np.random.Generator) -> None:
    """Draw one brush stroke: a random walk of vertices joined by thick lines with round joints."""
    width, height = canvas.size
    scale = min(height, width) / REFERENCE_SIZE
    average_radius = math.sqrt(height**2 + width**2) / 8

    num_vertices = int(rng.integers(MIN_VERTICES, MAX_VERTICES + 1))
    angle_min = MEAN_ANGLE - rng.uniform(0, ANGLE_RANGE)
    angle_max = MEAN_ANGLE + rng.uniform(0, ANGLE_RANGE)
    vertices = [(float(rng.integers(0, width)), float(rng.integers(0, height)))]
    for i in range(num_vertices):
        angle = rng.uniform(angle_min, angle_max)
        if i % 2 == 0:  # alternate turning direction so the stroke zig-zags instead of circling
            angle = 2 * math.pi - angle
        length = np.clip(rng.normal(average_radius, average_radius / 2), 0, 2 * average_radius)
        x, y = vertices[-1]
        x = float(np.clip(x + length * math.cos(angle), 0, width))
        y = float(np.clip(y + length * math.sin(angle), 0, height))
        vertices.append((x, y))

    brush = max(1, round(rng.uniform(MIN_BRUSH_WIDTH, MAX_BRUSH_WIDTH) * scale))
    draw = ImageDraw.Draw(canvas)
    draw.line(vertices, fill=1, width=brush)
    r = brush / 2
    for x, y in vertices:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=1)


def _draw_box(canvas: Image.Image, rng: np.random.Generator) -> None:
    """Draw one axis-aligned box whose sides are a random fraction of the image's."""
    width, height = canvas.size
    box_h = max(1, round(rng.uniform(MIN_BOX_SIDE, MAX_BOX_SIDE) * height))
    box_w = max(1, round(rng.uniform(MIN_BOX_SIDE, MAX_BOX_SIDE) * width))
    top = int(rng.integers(0, height - box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    ImageDraw.Draw(canvas).rectangle((left, top, left + box_w - 1, top + box_h - 1), fill=1)


def _hole_ratio(canvas: Image.Image) -> float:
    return float(np.asarray(canvas, dtype=np.float32).mean())


def random_training_mask(height: int, width: int, rng: np.random.Generator, with_boxes: bool = True) -> np.ndarray:
    """A free-form training mask (Yu et al. 2019): 1-3 brush strokes, optionally unioned with 1-2 boxes.

    The hole covers between `MIN_HOLE_RATIO` and `MAX_HOLE_RATIO` of the image: a stroke that would push it
    past the maximum is redrawn, and strokes are added until the minimum is reached. The result depends only
    on the state of `rng`. Returns float32 `(1, height, width)` with 1 = hole.
    """
    if height < 1 or width < 1:
        raise ConfigError(f"mask size must be positive, got height={height}, width={width}")
    canvas = Image.new("L", (width, height), 0)
    if with_boxes:
        for _ in range(int(rng.integers(MIN_BOXES, MAX_BOXES + 1))):
            _draw_box(canvas, rng)

    wanted = int(rng.integers(MIN_STROKES, MAX_STROKES + 1))
    drawn = 0
    for _ in range(_MAX_STROKE_TRIES):
        if drawn >= wanted and _hole_ratio(canvas) >= MIN_HOLE_RATIO:
            break
        candidate = canvas.copy()
        _draw_stroke(candidate, rng)
        if _hole_ratio(candidate) <= MAX_HOLE_RATIO:
            canvas, drawn = candidate, drawn + 1

    mask = np.asarray(canvas, dtype=np.float32)
    if rng.random() < 0.5:
        mask = mask[:, ::-1]
    if rng.random() < 0.5:
        mask = mask[::-1, :]
    return np.ascontiguousarray(mask)[None]


def checkerboard_masks(height: int, width: int, cell: int) -> np.ndarray:
    """The four complementary checkerboard masks with square cells of side `cell` pixels.

    Mask `k = 2 * a + b` is 1 where `((y // cell) % 2, (x // cell) % 2) == (a, b)`, so the four masks
    partition the image (every pixel is a hole in exactly one), also when `cell` does not divide the size.
    Returns float32 `(4, 1, height, width)`.
    """
    if not isinstance(cell, (int, np.integer)) or isinstance(cell, bool) or cell < 1:
        raise ConfigError(f"checkerboard cell size `cell` must be an integer >= 1 (pixels), got {cell!r}")
    if height < 1 or width < 1:
        raise ConfigError(f"mask size must be positive, got height={height}, width={width}")
    row_parity = (np.arange(height) // cell) % 2
    col_parity = (np.arange(width) // cell) % 2
    masks = np.zeros((4, 1, height, width), dtype=np.float32)
    for a in (0, 1):
        for b in (0, 1):
            masks[2 * a + b, 0] = np.outer(row_parity == a, col_parity == b)
    return masks
