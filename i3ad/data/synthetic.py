"""Deterministic MVTec-like synthetic data: three periodic textures and two objects (one grayscale).

``make_dataset`` writes the MVTec folder layout, so the synthetic set is read by the same reader as the
real one. Every image has its own ``numpy`` Generator seeded from (seed, category, split/defect, index)
with ``zlib.crc32`` as the stable name hash, so re-runs are byte-identical and no global RNG is touched.

Each defect is painted only inside a boolean region. Colour defects (holes, stains, stray threads) are
intensity outliers; their mask is exactly the pixels whose 8-bit value changed. Structural defects re-render
the same pattern at moved coordinates inside a patch (shifted, rotated, warped, threads out of step), so
local colour and contrast stay those of the texture; their mask is the patch (see ``render_sample``).
Fine detail has fixed pixel sizes (finest period >= 4.5 px), so every image size shows it resolved.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

import i3ad
from i3ad.atomic import atomic_write_text
from i3ad.errors import ConfigError, DatasetError

# Bump whenever the generated pixels change, so `ensure_dataset` regenerates cached copies.
GENERATOR_VERSION = 2
MARKER = ".i3ad-synthetic"  # in every category folder written here; only such folders are ever replaced
DEFAULT_SIZE = 128
DEFAULT_N_TRAIN = 80
DEFAULT_N_TEST_GOOD = 12
DEFAULT_N_TEST_PER_DEFECT = 6


DEFECT_SETS = ("structural", "colour", "all")  # `make-data --defects`: which defect kinds are written


@dataclass(frozen=True)
class CategorySpec:
    """A synthetic category: its name, ``kind`` ("texture" or "object"), channel count and defect kinds.

    ``colour`` kinds paint an intensity or colour outlier over the pattern (a hole, a stain, a stray
    thread): local statistics find them. ``structural`` kinds break the pattern itself (shifted, rotated
    or warped patches, dislocated threads) while keeping its local colour and contrast.
    """

    name: str
    kind: str
    channels: int
    colour: tuple[str, ...]
    structural: tuple[str, ...]

    @property
    def defects(self) -> tuple[str, ...]:
        """Every defect kind: the colour kinds, then the structural ones."""
        return self.colour + self.structural

    def defect_kinds(self, defects: str = "all") -> tuple[str, ...]:
        """The kinds of one of ``DEFECT_SETS``: "structural", "colour" or "all"."""
        if defects not in DEFECT_SETS:
            raise ConfigError(f"defects must be one of {', '.join(DEFECT_SETS)}, got {defects!r}.")
        return {"structural": self.structural, "colour": self.colour, "all": self.defects}[defects]


_TEXTURE_STRUCTURAL = ("dislocation", "rotated_patch", "warp")
SYNTHETIC_CATEGORIES: dict[str, CategorySpec] = {
    spec.name: spec
    for spec in (
        CategorySpec("carpet", "texture", 3, ("color", "hole", "thread"), _TEXTURE_STRUCTURAL),
        CategorySpec("tile", "texture", 3, ("crack", "glue_strip", "oil"), _TEXTURE_STRUCTURAL),
        CategorySpec("wood", "texture", 3, ("color", "hole", "scratch"), _TEXTURE_STRUCTURAL),
        CategorySpec("nut", "object", 3, ("color", "missing", "scratch"), ("scaled_rings",)),
        CategorySpec(
            "screw", "object", 1, ("bump", "missing_tip", "scratch"), ("thread_dislocation", "stretched_thread")
        ),
    )
}


# ----------------------------------------------------------------------------- drawing helpers

# Periodic fine detail (threads, grain, speckle, machined rings, screw threads) is drawn at fixed pixel sizes,
# like a camera at a fixed magnification: the finest period is >= 4.5 px whatever the image size, so a larger
# image shows more of the pattern, not a coarser one. Object outlines and defect sizes scale with the image.

_Texture = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class _Scene:
    """A rendered normal image (H, W, C float32 in [0, 1]) plus what defect painters need to know."""

    image: np.ndarray
    yy: np.ndarray
    xx: np.ndarray
    scale: float  # size / 128: defect lengths below are given for 128 px images
    background: np.ndarray | None = None  # objects: the image without the object
    body: np.ndarray | None = None  # objects: bool (H, W) where the object is
    geometry: dict | None = None
    # Textures: the pattern evaluated at texture coordinates (ty, tx) given per pixel; pixel noise and
    # illumination stay at the pixel, so a structural defect moves the pattern and nothing else.
    texture: _Texture | None = None
    period: float = 0.0  # textures: the pattern's repeat (px), the unit of structural defect sizes


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Unit-variance-ish noise that varies over ``cells`` cells across the image (bilinear upsampling)."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0.0, cells, size, dtype=np.float32)
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    f = (t - i0)[:, None]
    rows = grid[i0] * (1 - f) + grid[i0 + 1] * f  # (size, cells + 1)
    return rows[:, i0] * (1 - f.T) + rows[:, i0 + 1] * f.T


def _lattice(rng: np.random.Generator, cell_y: float, cell_x: float, n: int = 128) -> _Texture:
    """Value noise that can be read at any coordinates: N(0, 1) on a periodic grid, bilinear in between."""
    grid = rng.standard_normal((n, n)).astype(np.float32)

    def at(ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
        fy, fx = ty / np.float32(cell_y), tx / np.float32(cell_x)
        y0, x0 = np.floor(fy), np.floor(fx)
        wy, wx = fy - y0, fx - x0
        y0, x0 = y0.astype(np.int64) % n, x0.astype(np.int64) % n
        y1, x1 = (y0 + 1) % n, (x0 + 1) % n
        top = grid[y0, x0] * (1 - wx) + grid[y0, x1] * wx
        bottom = grid[y1, x0] * (1 - wx) + grid[y1, x1] * wx
        return (top * (1 - wy) + bottom * wy).astype(np.float32)

    return at


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _blob(rng: np.random.Generator, scene: _Scene, cy: float, cx: float, radius: float) -> np.ndarray:
    """An irregular filled disc: radius modulated by a few random low harmonics of the angle."""
    dy, dx = scene.yy - cy, scene.xx - cx
    angle = np.arctan2(dy, dx)
    r = np.ones_like(angle)
    for k in (2, 3, 5):
        r += rng.uniform(0.0, 0.15) * np.sin(k * angle + rng.uniform(0, 2 * np.pi))
    return np.hypot(dy, dx) <= max(radius, 1.5) * r


def _polyline(
    rng: np.random.Generator, scene: _Scene, y: float, x: float, length: float, width: float, wobble: float
) -> np.ndarray:
    """A thin random-walk line of about ``length`` pixels starting at (y, x)."""
    n_seg = 6
    heading = rng.uniform(0, 2 * np.pi)
    region = np.zeros(scene.yy.shape, dtype=bool)
    half = max(width, 1.0) / 2
    for _ in range(n_seg):
        heading += rng.normal(0.0, wobble)
        y1, x1 = y + np.sin(heading) * length / n_seg, x + np.cos(heading) * length / n_seg
        region |= _segment_distance(scene, y, x, y1, x1) <= half
        y, x = y1, x1
    return region


def _segment_distance(scene: _Scene, y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
    vy, vx = y1 - y0, x1 - x0
    t = ((scene.yy - y0) * vy + (scene.xx - x0) * vx) / max(vy * vy + vx * vx, 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(scene.yy - (y0 + t * vy), scene.xx - (x0 + t * vx))


def _luminance(image: np.ndarray) -> np.ndarray:
    return image.mean(axis=-1, keepdims=True)


def _recolor(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Keep the structure (luminance) but shift it towards a clearly different colour."""
    palette = np.array([[0.15, 0.45, 0.95], [0.2, 0.85, 0.3], [0.95, 0.9, 0.15], [0.75, 0.2, 0.85]], np.float32)
    colour = palette[rng.integers(len(palette))]
    return 0.3 * image + 0.7 * np.clip(_luminance(image) * colour * 1.8, 0, 1)


def _uniform_point(rng: np.random.Generator, size: int, margin: float = 0.15) -> tuple[float, float]:
    return tuple(rng.uniform(margin * size, (1 - margin) * size, 2))  # type: ignore[return-value]


# ----------------------------------------------------------------------------- textures


def _carpet(rng: np.random.Generator, size: int) -> _Scene:
    """Twill-woven threads (5-6 px wide) with per-thread brightness jitter, fibre noise and a colour jitter."""
    yy, xx = _grid(size)
    p = rng.uniform(5.0, 6.0)  # thread width: the finest period of the pattern
    oy, ox = rng.uniform(0, 8 * p, 2)
    n = 97
    gain_warp, gain_weft = rng.normal(0, 0.08, n).astype(np.float32), rng.normal(0, 0.08, n).astype(np.float32)
    fibres = _noise(rng, (size, size), 0.025)  # pixel noise; the fibre texture is the per-thread jitter
    light = 1 + 0.06 * _smooth_noise(rng, size, 3)
    base = np.array([0.62, 0.32, 0.24], np.float32) + _noise(rng, (3,), 0.02)

    def texture(ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
        u, v = tx + ox, ty + oy
        ix, iy = np.floor(u / p).astype(np.int64), np.floor(v / p).astype(np.int64)
        warp_on_top = (ix + iy) % 4 < 2
        profile = np.where(warp_on_top, np.sin(np.pi * ((u / p) % 1)), np.sin(np.pi * ((v / p) % 1))) ** 0.7
        gain = np.where(warp_on_top, gain_warp[ix % n], gain_weft[iy % n])
        lum = (0.3 + 0.55 * profile * (1 + gain) + fibres) * light
        return np.clip(lum[..., None] * base * 1.5, 0, 1).astype(np.float32)

    return _Scene(texture(yy, xx), yy, xx, size / 128, texture=texture, period=p)


def _carpet_defect(defect: str, rng: np.random.Generator, scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    size = scene.yy.shape[0]
    cy, cx = _uniform_point(rng, size)
    image = scene.image
    if defect == "hole":
        region = _blob(rng, scene, cy, cx, rng.uniform(0.05, 0.09) * size)
        painted = image * 0.18 + 0.03 + _noise(rng, image.shape, 0.02)
    elif defect == "color":
        region = _blob(rng, scene, cy, cx, rng.uniform(0.06, 0.1) * size)
        painted = _recolor(rng, image)
    else:  # thread: a stray light thread lying on the carpet
        region = _polyline(rng, scene, cy, cx, rng.uniform(0.3, 0.5) * size, rng.uniform(1.5, 2.5) * scene.scale, 0.35)
        painted = np.full_like(image, 0.9) * np.array([1.0, 0.95, 0.8], np.float32) + _noise(rng, image.shape, 0.03)
    return region, painted


def _tile(rng: np.random.Generator, size: int) -> _Scene:
    """Square tiles (16-20 px) with grout lines, per-tile colour jitter and dark/light speckle of 2-5 px."""
    yy, xx = _grid(size)
    period = rng.uniform(16, 20)
    grout = 2.0
    oy, ox = rng.uniform(0, period, 2)
    n = 16
    tile_jitter = (rng.normal(0, 0.04, (n, n, 1)) + rng.normal(0, 0.008, (n, n, 3))).astype(np.float32)
    base = np.array([0.78, 0.74, 0.66], np.float32) + _noise(rng, (3,), 0.02)
    dark = np.float32(rng.uniform(0.35, 0.6))
    fine, coarse, bright = _lattice(rng, 4.0, 4.0), _lattice(rng, 6.0, 6.0), _lattice(rng, 4.0, 4.0)
    grout_noise = _noise(rng, (size, size, 1), 0.03)
    noise = _noise(rng, (size, size, 3), 0.025)

    def texture(ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
        u, v = tx + ox, ty + oy
        in_grout = ((u % period) < grout) | ((v % period) < grout)
        ti, tj = np.floor(u / period).astype(np.int64) % n, np.floor(v / period).astype(np.int64) % n
        image = base + tile_jitter[tj, ti]
        # Speckle: thresholded value noise, blobs of a few pixels (the detail autoencoders blur away).
        image = np.where((fine(ty, tx) > 1.0)[..., None], image * dark, image)
        image = np.where((coarse(ty, tx) > 1.2)[..., None], image * 0.5 + 0.05, image)
        image = np.where((bright(ty, tx) > 1.2)[..., None], np.minimum(image + 0.15, 1), image)
        image = np.where(in_grout[..., None], 0.45 + grout_noise, image)
        return np.clip(image + noise, 0, 1).astype(np.float32)

    return _Scene(texture(yy, xx), yy, xx, size / 128, texture=texture, period=period)


def _tile_defect(defect: str, rng: np.random.Generator, scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    size = scene.yy.shape[0]
    cy, cx = _uniform_point(rng, size)
    image = scene.image
    if defect == "crack":
        region = _polyline(rng, scene, cy, cx, rng.uniform(0.35, 0.6) * size, rng.uniform(1.5, 2.2) * scene.scale, 0.6)
        painted = 0.12 + _noise(rng, image.shape, 0.02)
    elif defect == "glue_strip":
        angle = rng.uniform(0, np.pi)
        along = (scene.xx - cx) * np.cos(angle) + (scene.yy - cy) * np.sin(angle)
        across = -(scene.xx - cx) * np.sin(angle) + (scene.yy - cy) * np.cos(angle)
        region = (np.abs(across) <= rng.uniform(3, 5) * scene.scale) & (np.abs(along) <= rng.uniform(0.15, 0.3) * size)
        painted = 0.35 * image + 0.65 * np.array([0.88, 0.92, 0.97], np.float32)
    else:  # oil: a dark, slightly brown translucent blob
        region = _blob(rng, scene, cy, cx, rng.uniform(0.06, 0.1) * size)
        painted = image * np.array([0.5, 0.45, 0.38], np.float32)
    return region, painted


def _wood(rng: np.random.Generator, size: int) -> _Scene:
    """Warped grain lines (7-10 px apart) with fibre streaks (3 px across, 16 px along) and pixel noise."""
    yy, xx = _grid(size)
    period = rng.uniform(7, 10)
    # Gentle warp: its x-gradient stays below 1/period, so grain lines never fold back.
    warp = _lattice(rng, 48.0, 48.0)
    tilt = np.float32(rng.uniform(-1, 1) * 2 / 64)
    offset = rng.uniform(0, period)
    streaks = _lattice(rng, 16.0, 3.0)
    light = np.array([0.78, 0.57, 0.37], np.float32) + _noise(rng, (3,), 0.025)
    noise = _noise(rng, (size, size, 1), 0.025)

    def texture(ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
        phase = (tx + offset) / period + 0.9 * warp(ty, tx) + tilt * ty
        rings = (0.5 + 0.5 * np.sin(2 * np.pi * phase)) ** 3
        image = light * (1 - 0.42 * rings[..., None]) + 0.05 * streaks(ty, tx)[..., None] + noise
        return np.clip(image, 0, 1).astype(np.float32)

    return _Scene(texture(yy, xx), yy, xx, size / 128, texture=texture, period=period)


def _wood_defect(defect: str, rng: np.random.Generator, scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    size = scene.yy.shape[0]
    cy, cx = _uniform_point(rng, size)
    image = scene.image
    if defect == "scratch":
        region = _polyline(rng, scene, cy, cx, rng.uniform(0.3, 0.55) * size, rng.uniform(1.0, 1.6) * scene.scale, 0.12)
        painted = np.array([0.93, 0.86, 0.74], np.float32) + _noise(rng, image.shape, 0.02)
    elif defect == "hole":
        region = _blob(rng, scene, cy, cx, rng.uniform(0.035, 0.06) * size)
        painted = np.array([0.08, 0.05, 0.03], np.float32) + _noise(rng, image.shape, 0.015)
    else:  # color stain that keeps the grain
        region = _blob(rng, scene, cy, cx, rng.uniform(0.06, 0.11) * size)
        painted = _recolor(rng, image)
    return region, painted


def _texture_structural(defect: str, rng: np.random.Generator, scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """A patch where the pattern itself is moved: re-rendered at shifted, rotated or warped coordinates.

    The texture is the same function with the same noise and lighting, so the patch keeps the local colour
    and contrast; only the pattern's continuity (phase, orientation, straightness) breaks at the defect.
    """
    size = scene.yy.shape[0]
    cy, cx = _uniform_point(rng, size)
    dy, dx = scene.yy - cy, scene.xx - cx
    radius = max(rng.uniform(0.12, 0.18) * size, 8.0)
    region = _blob(rng, scene, cy, cx, radius)
    if defect == "dislocation":  # the patch's pattern is shifted by about half a period in x and y
        sy, sx = scene.period * rng.uniform(0.35, 0.65, 2) * rng.choice([-1.0, 1.0], 2)
        ty, tx = scene.yy - sy, scene.xx - sx
    elif defect == "rotated_patch":  # a patch of the same texture turned by 45-135 degrees
        a = rng.uniform(0.25, 0.75) * np.pi * rng.choice([-1.0, 1.0])
        c, s = np.float32(np.cos(a)), np.float32(np.sin(a))
        ty, tx = cy + dy * c - dx * s, cx + dy * s + dx * c
    else:  # warp: a smooth bump displacement, up to one period, that bends the pattern inside a disc
        r2 = (dy * dy + dx * dx) / radius**2
        bump = np.clip(1 - r2, 0, None) ** 2
        amplitude = min(scene.period * rng.uniform(0.6, 1.0), 0.5 * radius)  # <= R/2: the map never folds
        angle = rng.uniform(0, 2 * np.pi)
        ty = scene.yy - np.float32(amplitude * np.sin(angle)) * bump
        tx = scene.xx - np.float32(amplitude * np.cos(angle)) * bump
        region = amplitude * bump >= 0.5  # pixels the pattern moved under by at least half a pixel
    return region, scene.texture(ty.astype(np.float32), tx.astype(np.float32))


# ----------------------------------------------------------------------------- objects


def _nut(rng: np.random.Generator, size: int) -> _Scene:
    """A hexagonal metal nut with a bevel, a threaded bore and machined rings (~5 px), on a dark background."""
    yy, xx = _grid(size)
    s = size / 128
    background = np.array([0.16, 0.17, 0.19], np.float32) + 0.02 * _smooth_noise(rng, size, 2)[..., None]
    background = background + _noise(rng, (size, size, 1), 0.015)
    cy, cx = size / 2 + np.clip(rng.normal(0, 0.03 * size, 2), -0.06 * size, 0.06 * size)
    theta = rng.uniform(0, np.pi / 3)
    radius = rng.uniform(0.33, 0.37) * size  # circumradius
    apothem = radius * np.cos(np.pi / 6)
    dy, dx = yy - cy, xx - cx
    dist = np.hypot(dy, dx)
    hexagon = np.ones_like(dist, dtype=bool)
    for k in range(6):
        a = theta + np.pi / 6 + k * np.pi / 3
        hexagon &= dx * np.cos(a) + dy * np.sin(a) <= apothem
    bore = 0.42 * apothem
    body = hexagon & (dist > bore)
    metal = np.array([0.72, 0.70, 0.66], np.float32) + _noise(rng, (1,), 0.04) + _noise(rng, (3,), 0.01)
    light_angle = rng.uniform(0, 2 * np.pi)
    ring_period, ring_phase = rng.uniform(4.5, 5.5), rng.uniform(0, 2 * np.pi)
    noise = _noise(rng, (size, size, 3), 0.02)

    def face(period: np.ndarray | float) -> np.ndarray:
        """The scene with machined rings of the given period (px, per pixel or one value)."""
        shade = 1 + 0.12 * (dx * np.cos(light_angle) + dy * np.sin(light_angle)) / radius
        shade += 0.07 * np.sin(2 * np.pi * dist / period + ring_phase)  # machined rings
        shade = np.where(dist > 0.92 * apothem, shade * 0.72, shade)  # bevel
        shade = np.where(dist < bore + 2.5 * s, shade * 0.6, shade)  # thread in the bore
        image = np.where(body[..., None], metal * shade[..., None] + noise, background)
        return np.clip(image, 0, 1).astype(np.float32)

    geometry = {"cy": cy, "cx": cx, "bore": bore, "apothem": apothem, "radius": radius, "dist": dist, "s": s}
    geometry.update(face=face, ring_period=ring_period)
    return _Scene(face(ring_period), yy, xx, s, np.clip(background, 0, 1), body, geometry)


def _on_nut(rng: np.random.Generator, scene: _Scene, low: float, high: float) -> tuple[float, float]:
    g = scene.geometry
    r = rng.uniform(g["bore"] + low * (g["apothem"] - g["bore"]), g["bore"] + high * (g["apothem"] - g["bore"]))
    a = rng.uniform(0, 2 * np.pi)
    return g["cy"] + r * np.sin(a), g["cx"] + r * np.cos(a)


def _nut_defect(defect: str, rng: np.random.Generator, scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    size = scene.yy.shape[0]
    image = scene.image
    g = scene.geometry
    if defect == "scratch":
        y, x = _on_nut(rng, scene, 0.2, 0.8)
        region = _polyline(rng, scene, y, x, rng.uniform(0.15, 0.3) * size, rng.uniform(1.0, 1.6) * scene.scale, 0.25)
        region &= scene.body
        painted = np.array([0.25, 0.25, 0.27], np.float32) + _noise(rng, image.shape, 0.02)
    elif defect == "color":
        y, x = _on_nut(rng, scene, 0.3, 0.7)
        region = _blob(rng, scene, y, x, rng.uniform(0.05, 0.08) * size) & scene.body
        painted = _recolor(rng, image)
    elif defect == "scaled_rings":  # a patch of the face machined at 1.8-2.5x the ring period
        y, x = _on_nut(rng, scene, 0.35, 0.65)
        face = (g["dist"] > g["bore"] + 2.5 * g["s"]) & (g["dist"] <= 0.92 * g["apothem"])
        region = _blob(rng, scene, y, x, rng.uniform(0.1, 0.14) * size) & scene.body & face
        painted = g["face"](g["ring_period"] * rng.uniform(1.8, 2.5))
    else:  # missing: a chunk broken off the rim shows the background
        y, x = _on_nut(rng, scene, 1.0, 1.1)
        region = _blob(rng, scene, y, x, rng.uniform(0.2, 0.3) * g["radius"]) & scene.body
        painted = scene.background
    return region, painted


def _screw(rng: np.random.Generator, size: int) -> _Scene:
    """A grayscale screw (domed head, threaded shank, pointed tip) at a random angle on a light background."""
    yy, xx = _grid(size)
    s = size / 128
    background = 0.82 + 0.02 * _smooth_noise(rng, size, 2) + _noise(rng, (size, size), 0.015)
    background = np.clip(background, 0, 1)
    cy, cx = size / 2 + np.clip(rng.normal(0, 0.04 * size, 2), -0.08 * size, 0.08 * size)
    phi = rng.uniform(0, 2 * np.pi)
    u = (xx - cx) * np.cos(phi) + (yy - cy) * np.sin(phi)
    v = -(xx - cx) * np.sin(phi) + (yy - cy) * np.cos(phi)
    length = rng.uniform(0.6, 0.66) * size
    head_len, tip_len = 0.17 * length, 0.14 * length
    half_w, head_w = 0.05 * size, rng.uniform(0.095, 0.105) * size
    pitch = max(0.035 * size, 5.0)  # thread pitch: at least 5 px
    start, end = -length / 2, length / 2
    head_end = start + head_len
    head = (u <= head_end) & (((u - head_end) / head_len) ** 2 + (v / head_w) ** 2 <= 1)
    tip = (u > end - tip_len) & (u <= end) & (np.abs(v) <= half_w * (end - u) / tip_len)
    cylinder = 1 - np.clip(v / half_w, -1, 1) ** 2
    dome = 1 - np.clip(((u - head_end) / head_len) ** 2 + (v / head_w) ** 2, 0, 1)
    brightness = rng.uniform(-0.04, 0.04)
    noise = _noise(rng, (size, size), 0.02)

    def draw(phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image, body) with the thread at ``phase`` (in turns, per pixel) along the shank."""
        teeth = 1 + 0.18 * np.abs(phase % 1 * 2 - 1)
        shank = (u > head_end) & (u <= end - tip_len) & (np.abs(v) <= half_w * teeth)
        body = head | shank | tip
        threads = 0.12 * np.sin(2 * np.pi * (phase + 0.4 * v / pitch))
        metal = np.where(head, 0.3 + 0.3 * dome, 0.25 + 0.3 * cylinder + threads) + brightness + noise
        return np.clip(np.where(body, metal, background), 0, 1)[..., None].astype(np.float32), body

    phase = (u + rng.uniform(0, pitch)) / pitch
    image, body = draw(phase)
    geometry = {
        "u": u,
        "v": v,
        "head_end": head_end,
        "end": end,
        "tip_len": tip_len,
        "half_w": half_w,
        "cy": cy,
        "cx": cx,
        "phi": phi,
        "pitch": pitch,
        "phase": phase,
        "draw": draw,
    }
    return _Scene(image, yy, xx, s, background[..., None], body, geometry)


def _screw_defect(defect: str, rng: np.random.Generator, scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    size = scene.yy.shape[0]
    g = scene.geometry
    image = scene.image
    if defect == "missing_tip":
        cut = g["end"] - g["tip_len"] * rng.uniform(0.5, 1.6)
        region = scene.body & (g["u"] > cut)
        painted = scene.background
    elif defect in ("thread_dislocation", "stretched_thread"):
        # A stretch of the shank whose thread is out of step (half a turn) or cut at 1.6-2.2x the pitch.
        stretch = rng.uniform(1.5, 2.5) * g["pitch"]
        first = g["head_end"] + 0.5 * g["pitch"]
        a = rng.uniform(first, max(first, g["end"] - g["tip_len"] - stretch))  # small screws: from the head
        inside = (g["u"] >= a) & (g["u"] < a + stretch)
        if defect == "thread_dislocation":
            phase = np.where(inside, g["phase"] + 0.5, g["phase"])
        else:
            start = (a - g["u"]) / g["pitch"] + g["phase"]  # the phase at u = a, on every row
            phase = np.where(inside, start + (g["u"] - a) / (g["pitch"] * rng.uniform(1.6, 2.2)), g["phase"])
        painted, body = g["draw"](phase)
        region = inside & (scene.body | body)
    else:
        along = rng.uniform(g["head_end"] - 0.05 * size, g["end"] - g["tip_len"])
        side = rng.choice([-1.0, 1.0])
        if defect == "bump":  # extra material stuck to the side of the shank
            radius = max(rng.uniform(0.6, 1.0) * g["half_w"], 2.0)
            across = side * (g["half_w"] * 1.18 + 0.5 * radius)  # just outside the thread teeth
            region = _blob(rng, scene, *_screw_point(g, along, across), radius) & ~scene.body
            painted = 0.35 + _noise(rng, image.shape, 0.03)
        else:  # scratch: a bright line across the metal
            across = side * g["half_w"] * rng.uniform(0, 0.5)
            region = (
                _polyline(
                    rng,
                    scene,
                    *_screw_point(g, along, across),
                    rng.uniform(0.1, 0.2) * size,
                    rng.uniform(1.0, 1.5) * scene.scale,
                    0.3,
                )
                & scene.body
            )
            painted = 0.9 + _noise(rng, image.shape, 0.02)
    return region, painted


def _screw_point(g: dict, along: float, across: float) -> tuple[float, float]:
    c, s = np.cos(g["phi"]), np.sin(g["phi"])
    return g["cy"] + along * s + across * c, g["cx"] + along * c - across * s


_Renderer = Callable[[np.random.Generator, int], _Scene]
_Painter = Callable[[str, np.random.Generator, _Scene], tuple[np.ndarray, np.ndarray]]
_RENDERERS: dict[str, tuple[_Renderer, _Painter]] = {
    "carpet": (_carpet, _carpet_defect),
    "tile": (_tile, _tile_defect),
    "wood": (_wood, _wood_defect),
    "nut": (_nut, _nut_defect),
    "screw": (_screw, _screw_defect),
}


# ----------------------------------------------------------------------------- sampling and writing


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def render_sample(
    category: str, size: int, rng: np.random.Generator, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one image: ``(normal, image, mask)`` as uint8 ``(H, W, C)``, uint8 ``(H, W, C)``, bool ``(H, W)``.

    Without ``defect``, ``image`` is ``normal`` and the mask is empty. For a colour kind ``mask`` is exactly
    the pixels where ``image`` differs from ``normal``. For a structural kind it is the patch whose pattern was
    replaced: ``image`` equals ``normal`` everywhere outside it, and inside it at least a quarter of the pixels
    differ (where the moved pattern is flat, e.g. inside a plain tile, moving it changes no pixel; those
    pixels still belong to the defect).
    Draws that change too few pixels are redrawn.
    """
    spec = _spec(category)
    render, paint = _RENDERERS[category]
    scene = render(rng, size)
    normal = _to_uint8(scene.image)
    if defect is None:
        return normal, normal.copy(), np.zeros((size, size), dtype=bool)
    if defect not in spec.defects:
        raise DatasetError(
            f"synthetic category {category!r} has no defect {defect!r}; it has {', '.join(spec.defects)}."
        )
    min_pixels = max(6, int(0.0008 * size * size))
    if scene.texture is not None and defect in spec.structural:
        paint = _texture_structural
    for _ in range(50):
        region, painted = paint(defect, rng, scene)
        painted = np.broadcast_to(painted, scene.image.shape)
        image = _to_uint8(np.where(region[..., None], painted, scene.image))
        changed = np.any(image != normal, axis=-1)
        if defect not in spec.structural:
            if changed.sum() >= min_pixels:
                return normal, image, changed
        elif changed.sum() >= max(min_pixels, 0.25 * region.sum()):
            return normal, image, region.copy()
    raise RuntimeError(f"could not place a visible {defect!r} defect on synthetic {category!r} at size {size}")


def _spec(category: str) -> CategorySpec:
    if category not in SYNTHETIC_CATEGORIES:
        raise DatasetError(f"unknown synthetic category {category!r}; available: {', '.join(SYNTHETIC_CATEGORIES)}.")
    return SYNTHETIC_CATEGORIES[category]


def _category_names(categories: list[str] | str | None) -> list[str]:
    if categories is None:
        return list(SYNTHETIC_CATEGORIES)
    if isinstance(categories, str):
        categories = [categories]
    return list(dict.fromkeys(categories))  # drop repeats, keep order


def _rng(seed: int, category: str, group: str, index: int) -> np.random.Generator:
    entropy = [seed, zlib.crc32(category.encode()), zlib.crc32(group.encode()), index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _save_png(array: np.ndarray, path: Path) -> None:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    # Level 1: several times faster than the default on noisy textures, and barely larger.
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _write_category(
    folder: Path, spec: CategorySpec, size: int, seed: int, counts: dict[str, int], defects: str
) -> None:
    def write(group: str, defect: str | None, n: int) -> None:
        image_dir = folder / group.split("/")[0] / (defect or "good")
        image_dir.mkdir(parents=True, exist_ok=True)
        if defect is not None:
            (folder / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        for index in range(n):
            _, image, mask = render_sample(spec.name, size, _rng(seed, spec.name, group, index), defect)
            _save_png(image, image_dir / f"{index:03d}.png")
            if defect is not None:
                _save_png(mask.astype(np.uint8) * 255, folder / "ground_truth" / defect / f"{index:03d}_mask.png")

    write("train/good", None, counts["n_train"])
    write("test/good", None, counts["n_test_good"])
    for defect in spec.defect_kinds(defects):
        write(f"test/{defect}", defect, counts["n_test_per_defect"])
    (folder / MARKER).write_text(f"written by i3ad.data.synthetic (generator version {GENERATOR_VERSION})\n")


def _check_settings(size: int, seed: int, counts: dict[str, int], defects: str) -> None:
    if size < 32:
        raise ConfigError(f"synthetic image size must be at least 32 pixels, got {size}.")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}.")
    for name, value in counts.items():
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}.")
    if defects not in DEFECT_SETS:
        raise ConfigError(f"defects must be one of {', '.join(DEFECT_SETS)}, got {defects!r}.")


def make_dataset(
    out: Path | str,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    categories: list[str] | None = None,
    n_train: int = DEFAULT_N_TRAIN,
    n_test_good: int = DEFAULT_N_TEST_GOOD,
    n_test_per_defect: int = DEFAULT_N_TEST_PER_DEFECT,
    defects: str = "all",
) -> list[str]:
    """Write the synthetic dataset in MVTec layout under ``out``; returns the categories written.

    ``categories=None`` writes all of ``SYNTHETIC_CATEGORIES``; ``defects`` picks the defect kinds written
    ("structural", "colour" or "all", see ``CategorySpec``). Category folders previously written by
    this generator are replaced; any other existing folder of the same name is left alone and raises
    ``DatasetError``. ``out/synthetic.json`` is written last, so a missing one means an interrupted run.
    """
    out = Path(out)
    names = _category_names(categories)
    specs = [_spec(name) for name in names]
    counts = {"n_train": n_train, "n_test_good": n_test_good, "n_test_per_defect": n_test_per_defect}
    _check_settings(size, seed, counts, defects)
    for spec in specs:
        target = out / spec.name
        if target.exists() and not (target / MARKER).exists():
            raise DatasetError(
                f"{target} exists and was not written by the synthetic generator; "
                "choose another output folder (it is never overwritten)."
            )
    out.mkdir(parents=True, exist_ok=True)
    info_path = out / "synthetic.json"
    info_path.unlink(missing_ok=True)
    for spec in specs:
        target = out / spec.name
        staging = out / f".{spec.name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        _write_category(staging, spec, size, seed, counts, defects)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    info = {
        "generator": "i3ad.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "i3ad_version": getattr(i3ad, "__version__", "unknown"),
        "numpy_version": np.__version__,
        "pillow_version": PIL.__version__,
        "seed": seed,
        "size": size,
        **counts,
        "defects": defects,
        "categories": {
            spec.name: {
                "kind": spec.kind,
                "channels": spec.channels,
                "defects": list(spec.defect_kinds(defects)),
                "structural": [d for d in spec.defect_kinds(defects) if d in spec.structural],
            }
            for spec in specs
        },
    }
    (out / "README.txt").write_text(_readme(info))
    atomic_write_text(info_path, json.dumps(info, indent=2) + "\n")
    return names


def _readme(info: dict) -> str:
    lines = [
        "Synthetic MVTec-like anomaly-detection data written by i3ad.data.synthetic.",
        f"generator version {info['generator_version']}, i3ad {info['i3ad_version']}, numpy {info['numpy_version']}, "
        f"pillow {info['pillow_version']}",
        f"seed {info['seed']}, size {info['size']}x{info['size']}, per category: {info['n_train']} train, "
        f"{info['n_test_good']} test/good, {info['n_test_per_defect']} per defect kind, defects: {info['defects']}",
        "",
        "Layout: <category>/train/good, <category>/test/<defect>, <category>/ground_truth/<defect>/<stem>_mask.png",
        "Masks are 0/255. Colour kinds: exactly the pixels the defect changed. Structural kinds (the pattern",
        "shifted, rotated, warped or out of step, local colour and contrast kept): the patch whose pattern was",
        "replaced; every pixel outside it is unchanged.",
        "",
    ]
    for name, cat in info["categories"].items():
        lines.append(
            f"{name}: {cat['kind']}, {cat['channels']} channel(s), defects {', '.join(cat['defects'])}"
            f" (structural: {', '.join(cat['structural']) or 'none'})"
        )
    return "\n".join(lines) + "\n"


def ensure_dataset(
    out: Path | str,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    categories: list[str] | None = None,
    n_train: int = DEFAULT_N_TRAIN,
    n_test_good: int = DEFAULT_N_TEST_GOOD,
    n_test_per_defect: int = DEFAULT_N_TEST_PER_DEFECT,
    defects: str = "all",
) -> Path:
    """Return ``out``, generating the dataset first unless ``out/synthetic.json`` already matches.

    A match needs the same generator version, seed, size, counts and defect set, and every requested category
    present. Call it from one process (e.g. the sweep driver), not from many at once.
    """
    out = Path(out)
    names = _category_names(categories)
    for name in names:
        _spec(name)
    wanted = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test_per_defect,
        "defects": defects,
    }
    try:
        info = json.loads((out / "synthetic.json").read_text())
    except (OSError, ValueError):
        info = None
    if (
        isinstance(info, dict)
        and all(info.get(key) == value for key, value in wanted.items())
        and all(name in info.get("categories", {}) and (out / name / MARKER).exists() for name in names)
    ):
        return out
    make_dataset(out, size, seed, names, n_train, n_test_good, n_test_per_defect, defects)
    return out
