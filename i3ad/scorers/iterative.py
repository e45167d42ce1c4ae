"""I3AD's scorer: iterative SSIM-mask inpainting on a trained generator, and its settings.

Iteration 0 is the checkerboard initialisation: each image is inpainted under four complementary
checkerboard masks and the four fills are combined into one reconstruction. Iteration i >= 1 masks
the pixels whose SSIM to the input is below the threshold U and inpaints them again, keeping every
unmasked pixel from the input (`x_{i+1} = G(x_i, M_i)` composited onto `x0`).

The fast path batches images and the four checkerboard masks, runs the generator's inference copy
(`models.inference`: sub-pixel deconvolutions, in-place gating; equal to ~1e-7), in bf16 where the CPU has
it (`precision.compute_dtype`; SSIM maps and scores in fp32), and passes through the
generator only the images whose mask is non-empty and still changing. An image whose mask is empty
becomes x0 again (every pixel is kept) without a generator pass; one whose mask is unchanged would come
back from the generator unchanged, so skipping it is exact for `stop_eps = 0`; `stop_eps > 0` is the
paper's stop rule (|M_i xor M_{i-1}| <= eps * |M_{i-1}|).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from ..checks import check_float, check_int, check_str, check_types
from ..device import autocast
from ..errors import ConfigError
from ..masks import checkerboard_masks
from ..models import InpaintGenerator
from ..models.inference import prepare_for_inference
from ..precision import check_cpu_precision, compute_dtype
from ..ssim import ssim_map
from .base import BATCH_SIZE, IterationMaps, as_tensor

SCORE_REDUCTIONS = ("max", "mean")
MAX_PATCH_SIZE = 1024  # checkerboard cell, pixels
MAX_ITERATIONS = 10_000  # N
COMPILE_BACKENDS = ("inductor", "eager")


@dataclass
class DetectionSettings:
    """Test-time settings. `score` reduces an anomaly map to an image score: "max" or "mean" of the map."""

    threshold: float = 0.3  # U: a pixel is re-inpainted while SSIM(x0, x_i) < U
    patch_size: int = 6  # checkerboard cell size in pixels
    iterations: int = 30  # N
    stop_eps: float = 0.01
    score: str = "max"
    # Pixels of each map's border left out of the image score: the SSIM window's radius (11 // 2). Over that
    # frame the window reads padding, and the networks' zero padding adds errors on normal images too.
    border: int = 5
    batch_size: int = BATCH_SIZE  # generator inputs per forward pass
    # torch.compile the generator (`"inductor"`; `"eager"` checks the wiring only): faster passes after a
    # one-off compile of seconds to a minute per process, so worth it for long runs, not for a few images.
    compile: str | None = None
    # The generator's passes on a CPU: "fp32", "bf16" (autocast) or "auto" = bf16 where the CPU has native
    # bf16; SSIM maps and scores stay fp32. fp32 by default: bf16 moved one synthetic category's image AUROC
    # by 0.014 (> 0.01; benchmarks/bf16_detection.py). On CUDA the GPU's AMP path applies.
    cpu_precision: str = "fp32"

    def __post_init__(self) -> None:
        check_types(type(self), self)
        check_float(self.threshold, "threshold", 0.0, 1.0, low_open=True)
        check_int(self.patch_size, "patch_size", 1, MAX_PATCH_SIZE)
        check_int(self.iterations, "iterations", 0, MAX_ITERATIONS)
        check_float(self.stop_eps, "stop_eps", 0.0, 1.0)
        check_int(self.border, "border", 0, MAX_PATCH_SIZE)
        check_str(self.score, "score")
        if self.score not in SCORE_REDUCTIONS:
            raise ConfigError(f"score {self.score!r} is unknown; choose one of {', '.join(SCORE_REDUCTIONS)}")
        check_int(self.batch_size, "batch_size", 1, 4096)
        if self.compile not in (None, *COMPILE_BACKENDS):
            raise ConfigError(
                f"compile {self.compile!r} is unknown; choose one of {', '.join(COMPILE_BACKENDS)} or leave it unset"
            )
        check_cpu_precision(self.cpu_precision)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DetectionSettings:
        """Build from a dict, ignoring keys that are not detection settings."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})


_COMPILED: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, Callable]] = weakref.WeakKeyDictionary()
# generator -> (each parameter's (storage address, version counter), its inference copy)
_PREPARED: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, torch.nn.Module]] = weakref.WeakKeyDictionary()


def inference_copy(generator: torch.nn.Module) -> torch.nn.Module:
    """`prepare_for_inference(generator)`, reused while the generator's weights are unchanged.

    Reused so a compiled copy is compiled once per process; rebuilt when any parameter was written since
    (an optimiser step or `load_state_dict` bumps the tensor's version counter) or moved (`.to(device)`
    gives it new storage), so it is never stale.
    """
    fingerprint = tuple((p.data_ptr(), p._version) for p in generator.parameters())
    cached = _PREPARED.get(generator)
    if cached is None or cached[0] != fingerprint:
        cached = (fingerprint, prepare_for_inference(generator))
        _PREPARED[generator] = cached
    return cached[1]


def compiled(module: torch.nn.Module, backend: str) -> Callable:
    """`torch.compile(module)` with a dynamic batch size, once per module and backend in this process."""
    per_module = _COMPILED.setdefault(module, {})
    if backend not in per_module:
        per_module[backend] = torch.compile(module, backend=backend, dynamic=True)
    return per_module[backend]


class IterativeInpainter:
    """I3AD's test-time procedure on a trained generator; batched and skipping finished images."""

    skip_cycles = True  # end 2-cycles without generator passes (exact); off only to time the upper bound

    def __init__(
        self, generator: InpaintGenerator, settings: DetectionSettings, device: torch.device | None = None
    ) -> None:
        self.generator = generator.eval()
        self.settings = settings
        self.device = device or next(generator.parameters()).device
        fast = inference_copy(generator)
        self.forward = compiled(fast, settings.compile) if settings.compile else fast
        self.dtype = compute_dtype(self.device, settings.cpu_precision)
        self.generator_passes = 0

    @torch.no_grad()
    def _inpaint(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Inpaint `images` (on CPU) under `masks` in device batches; returns CPU tensors."""
        out = torch.empty_like(images)
        step = self.settings.batch_size
        for start in range(0, len(images), step):
            x = images[start : start + step].to(self.device)
            m = masks[start : start + step].to(self.device)
            with autocast(self.device, self.dtype):
                _, fine = self.forward(x * (1 - m), m)
            out[start : start + step] = (fine.float() * m + x * (1 - m)).cpu()
        self.generator_passes += len(images)
        return out

    def initial_reconstruction(self, images: torch.Tensor) -> torch.Tensor:
        """Fill each image under the four checkerboard masks and combine the four fills."""
        n, _, h, w = images.shape
        boards = torch.from_numpy(checkerboard_masks(h, w, self.settings.patch_size))  # (4, 1, H, W)
        chunk = max(1, self.settings.batch_size // 4)
        out = torch.empty_like(images)
        for start in range(0, n, chunk):
            x = images[start : start + chunk]
            b = len(x)
            repeated = x.repeat_interleave(4, dim=0)  # image 0 x4, image 1 x4, ...
            masks = boards.repeat(b, 1, 1, 1)
            fills = self._inpaint(repeated, masks).view(b, 4, *x.shape[1:])
            out[start : start + b] = (fills * boards.unsqueeze(0)).sum(dim=1)
        return out

    def iterate(self, images: np.ndarray | torch.Tensor) -> Iterator[IterationMaps]:
        """Yield the anomaly maps of all images after iteration 0 (checkerboard) and 1..N.

        When the generator is exhausted, `self.reconstruction` holds the final reconstructions.
        """
        x0 = as_tensor(images)
        settings = self.settings
        self.generator_passes = 0
        x = self.initial_reconstruction(x0)
        similarity = ssim_map(x0, x)
        squared = (x0 - x).pow(2).mean(dim=1)
        yield self._maps(0, similarity, squared, len(x0))
        n = len(x0)
        active = torch.ones(n, dtype=torch.bool)
        previous = torch.zeros((n, 1, *x0.shape[2:]))  # M_{i-1}
        # x_i depends on M_i alone (x_i = G(x0 masked by M_i) composited onto x0), so M_i == M_{i-2} means
        # the images alternate between their last two states for good: exact, no more generator passes.
        before = _State(
            torch.zeros((n, 1, *x0.shape[2:])), x.clone(), similarity.clone(), squared.clone()
        )  # M_{i-2}, x_{i-2}
        cycling = torch.zeros(n, dtype=torch.bool)
        for iteration in range(1, settings.iterations + 1):
            if cycling.any():
                before.swap(cycling, x, similarity, squared)
            masks = (similarity < settings.threshold).float().unsqueeze(1)
            # An empty mask keeps every pixel from x0, so x_{i+1} = x0 with no generator pass; x0 then
            # has SSIM 1 everywhere, so the mask stays empty and the image is done.
            emptied = (active & (masks.flatten(1).sum(1) == 0)).nonzero().flatten()
            if len(emptied):
                x[emptied] = x0[emptied]
                similarity[emptied] = ssim_map(x0[emptied], x0[emptied])
                squared[emptied] = 0.0
                active[emptied] = False
            active &= self._still_changing(masks, previous, first=iteration == 1)
            if iteration > 2 and self.skip_cycles:
                repeats = active & (masks == before.masks).flatten(1).all(1)
                if repeats.any():  # x_i = x_{i-2}: the stored state; x_{i-1} becomes the other half of the cycle
                    before.swap(repeats, x, similarity, squared)
                    active &= ~repeats
                    cycling |= repeats
            index = active.nonzero().flatten()
            if len(index):
                before.store(index, previous, x, similarity, squared)
                x[index] = self._inpaint(x0[index], masks[index])
                similarity[index] = ssim_map(x0[index], x[index])
                squared[index] = (x0[index] - x[index]).pow(2).mean(dim=1)
                previous[index] = masks[index]
            self.reconstruction = x
            yield self._maps(iteration, similarity, squared, len(index) + len(emptied) + int(cycling.sum()))
        self.reconstruction = x

    def _maps(self, iteration: int, similarity: torch.Tensor, squared: torch.Tensor, changed: int) -> IterationMaps:
        return IterationMaps(
            iteration, (1.0 - similarity).numpy(), squared.numpy().copy(), changed, self.generator_passes
        )

    def _still_changing(self, masks: torch.Tensor, previous: torch.Tensor, first: bool) -> torch.Tensor:
        """False for images whose mask changed by at most eps * |previous mask| (the paper's stop rule)."""
        if first:
            return torch.ones(len(masks), dtype=torch.bool)
        changed = (masks != previous).flatten(1).sum(1)
        return changed > self.settings.stop_eps * previous.flatten(1).sum(1)


@dataclass
class _State:
    """Per-image mask and reconstruction of an earlier iteration, for the fast path's cycle check."""

    masks: torch.Tensor
    x: torch.Tensor
    similarity: torch.Tensor
    squared: torch.Tensor

    def store(
        self, index: torch.Tensor, masks: torch.Tensor, x: torch.Tensor, similarity: torch.Tensor, squared: torch.Tensor
    ) -> None:
        self.masks[index], self.x[index] = masks[index], x[index]
        self.similarity[index], self.squared[index] = similarity[index], squared[index]

    def swap(self, which: torch.Tensor, x: torch.Tensor, similarity: torch.Tensor, squared: torch.Tensor) -> None:
        """Exchange the stored reconstruction and maps with the current ones for the images in `which`."""
        for stored, current in ((self.x, x), (self.similarity, similarity), (self.squared, squared)):
            held = stored[which].clone()
            stored[which] = current[which]
            current[which] = held
