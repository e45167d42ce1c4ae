"""Training loops: the SN-PatchGAN inpainter (hinge + L1), the autoencoder baselines and the GAN baselines.

Both loops share one shape: images are loaded once, each step draws a batch (and crops and masks) from
one NumPy generator whose state is checkpointed, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, distributed
from .atomic import atomic_write_text
from .checkpoint import (
    MODEL_JSON,
    TRAINING_STATE,
    load_training_state,
    read_model_info,
    recover,
    save_checkpoint,
    save_model_folder,
)
from .checks import MAX_IMAGE_SIZE, MAX_WIDTH, check_bool, check_float, check_int, check_mapping, check_str, check_types
from .data import MVTecCategory, load_image
from .device import autocast, grad_scaler, resolve_device, seed_everything
from .errors import CheckpointError, ConfigError, TrainingDiverged
from .inpaint_quality import HoleProbe, holdout_indices, inpainter_summary
from .locks import exclusive
from .masks import random_training_mask
from .models import (
    AutoencoderConfig,
    ConvAutoencoder,
    DiscriminatorConfig,
    GanConfig,
    GanNetwork,
    GeneratorConfig,
    InpaintGenerator,
    PatchDiscriminator,
    feature_distance_map,
)
from .precision import check_cpu_precision, compute_dtype, prepare_module, to_layout
from .reconstruction_quality import PROBED_METHODS, ReconstructionProbe, reconstruction_summary
from .scorers import COMPILE_BACKENDS, TRAIN_METHODS, fit_reference
from .ssim import ssim_map

METHODS = TRAIN_METHODS  # the trainable methods (i3ad/scorers/registry.py lists them)
TRAIN_LOG = "train_log.jsonl"
GAN_METHODS = ("anogan", "f-anogan", "aegan")  # trained by `_Trainer._latent_gan_step`
GAN_SIDE = 16  # the GAN baselines' networks downsample to 1/16 (i3ad.models.gan)
# Documented bounds (README "Settings and their bounds"): sizes a model could be built and trained at.
TRAIN_INT_BOUNDS = {
    "steps": (1, 10_000_000),
    "batch_size": (1, 4096),
    "image_size": (4, MAX_IMAGE_SIZE),
    "width": (1, MAX_WIDTH),
    "latent_dim": (1, 4096),
    "ae_width": (1, MAX_WIDTH),
    "seed": (0, 2**32 - 1),
    "log_every": (1, 10_000_000),
    "checkpoint_every": (1, 10_000_000),
    "holdout": (0, 100_000),
    "gan_warmup": (0, 10_000_000),
}
TRAIN_FLOAT_BOUNDS = {  # learning rates in (0, 1]; loss weights in [0, 1000]
    "lr_g": (0.0, 1.0),
    "lr_inpainter": (0.0, 1.0),
    "lr_d": (0.0, 1.0),
    "lr_ae": (0.0, 1.0),
    "l1_weight": (0.0, 1000.0),
    "gan_weight": (0.0, 1000.0),
    "hole_l1_weight": (0.0, 1000.0),
}
# Settings a resumed run may change: they do not alter what the finished model is (steps extends the run).
# The step's execution settings (precision, layout, compile) are resumable too, like the device.
RESUMABLE_SETTINGS = (
    "steps",
    "device",
    "max_seconds",
    "log_every",
    "checkpoint_every",
    "cpu_precision",
    "channels_last",
    "compile",
)


@dataclass
class TrainConfig:
    """Everything that determines a training run; saved into the model folder."""

    method: str = "i3ad"
    steps: int = 2000
    batch_size: int = 8
    image_size: int = 128
    crop_size: int | None = None  # texture patches: random crops of this size from image_size images
    width: int = 16  # generator/discriminator base width; 48 is the DeepFill-v2 size
    attention: bool = True
    latent_dim: int = 100
    ae_width: int = 32
    lr_g: float = 1e-4  # the GAN baselines' generator (and encoder)
    lr_inpainter: float = 1e-3  # I3AD's inpainting generator (issue 15: 1e-4 stayed at the mean-colour fill)
    lr_d: float = 4e-4
    lr_ae: float = 2e-4
    l1_weight: float = 1.0
    gan_weight: float = 0.1
    # I3AD's recipe (issue 15, measured in docs/inpainter.md): an L1-only warm-up of `gan_warmup` steps
    # (no discriminator), an extra L1 term over the hole pixels alone, and the wide output layers.
    gan_warmup: int = 150
    hole_l1_weight: float = 1.0
    wide_output: bool = True
    # Training normals held out to check the model learned something: I3AD's hole error (i3ad.inpaint_quality),
    # the one-pass reconstruction baselines' error (i3ad.reconstruction_quality). AnoGAN trains on all images.
    holdout: int = 4
    mask_boxes: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA (bf16, or fp16 with a gradient scaler)
    # How the step runs (i3ad/precision.py); none changes what is trained, only its speed and float rounding.
    # CPU: "fp32", "bf16" (autocast), or "auto" = bf16 where the CPU has native bf16. fp32 by default until
    # bf16 is shown harmless on a bf16 CPU (benchmarks/bf16_detection.py missed 0.01 on one map: closing-16).
    cpu_precision: str = "fp32"
    channels_last: bool = False  # i3ad's G and D in NHWC layout; opt-in (slower in fp32 on an AVX2 CPU, measured)
    # torch.compile i3ad's G and D ("inductor"; "eager" checks the wiring). Opt-in: on a 2-core CPU the inductor
    # step was 1.5x faster but its 96 s compile paid off only after ~1800 steps (docs/benchmarks.md).
    compile: str | None = None
    log_every: int = 10
    checkpoint_every: int = 200
    max_seconds: float | None = None  # optional wall-clock budget; training stops at the first step past it

    def __post_init__(self) -> None:
        check_types(type(self), self)
        check_str(self.method, "method")
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r} is unknown; choose one of {', '.join(METHODS)}")
        for name, (low, high) in TRAIN_INT_BOUNDS.items():
            check_int(getattr(self, name), name, low, high)
        for name, (low, high) in TRAIN_FLOAT_BOUNDS.items():
            check_float(getattr(self, name), name, low, high, low_open=name.startswith("lr_"))
        for name in ("attention", "wide_output", "mask_boxes", "amp", "channels_last"):
            check_bool(getattr(self, name), name)
        check_str(self.device, "device")
        check_cpu_precision(self.cpu_precision)
        if self.compile is not None and self.compile not in COMPILE_BACKENDS:
            raise ConfigError(
                f"compile {self.compile!r} is unknown; choose one of {', '.join(COMPILE_BACKENDS)} or leave it unset"
            )
        if self.crop_size is not None:
            check_int(self.crop_size, "crop_size", 4, MAX_IMAGE_SIZE)
            if not 4 <= self.crop_size <= self.image_size:
                raise ConfigError(f"crop_size {self.crop_size} must lie between 4 and image_size {self.image_size}")
        if self.max_seconds is not None:
            check_float(self.max_seconds, "max_seconds", 0.0, 1e9, low_open=True)
        if self.method in GAN_METHODS and self.patch_size % GAN_SIDE:
            raise ConfigError(
                f"the training patch size {self.patch_size} must be divisible by {GAN_SIDE} for the {self.method} "
                "networks; change image_size or crop_size"
            )
        if self.patch_size % 4:
            raise ConfigError(
                f"the training patch size {self.patch_size} must be divisible by 4 for the generator; "
                "change image_size or crop_size"
            )

    @property
    def patch_size(self) -> int:
        """Side of the square the model sees during training."""
        return self.crop_size or self.image_size

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. YAML), naming any unknown key."""
        check_mapping(values, "the training settings")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class TrainEvent:
    """What a training loop tells its caller every `log_every` steps and at each checkpoint."""

    step: int
    metrics: dict[str, float]
    checkpoint: Path | None = None  # the model folder, when a checkpoint was just written
    finished: bool = False


@dataclass
class TrainResult:
    """The outcome of `train`: where the model is and how training went."""

    model_dir: Path
    steps: int
    seconds: float
    resumed_from: int | None = None
    already_finished: bool = False
    last_metrics: dict[str, float] = field(default_factory=dict)


class _Batches:
    """Draws training batches (random images, crops and hole masks) from one checkpointable generator."""

    def __init__(self, images: torch.Tensor, config: TrainConfig, rng: np.random.Generator) -> None:
        self.images = images
        self.config = config
        self.rng = rng

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        n, _, h, w = self.images.shape
        index = self.rng.integers(0, n, size=cfg.batch_size)
        size = cfg.patch_size
        tops = self.rng.integers(0, h - size + 1, size=cfg.batch_size)
        lefts = self.rng.integers(0, w - size + 1, size=cfg.batch_size)
        batch = torch.stack(
            [self.images[i, :, t : t + size, x : x + size] for i, t, x in zip(index, tops, lefts, strict=True)]
        )
        masks = np.stack(
            [random_training_mask(size, size, self.rng, with_boxes=cfg.mask_boxes) for _ in range(cfg.batch_size)]
        )
        return batch, torch.from_numpy(masks)


def load_train_images(category: MVTecCategory, image_size: int) -> torch.Tensor:
    """All of a category's `train/good` images, resized, as one (N, C, H, W) tensor in [-1, 1]."""
    channels = category.channels
    arrays = [load_image(p, image_size, channels) for p in category.train_paths()]
    return torch.from_numpy(np.stack(arrays))


def _check_finite(step: int, losses: dict[str, torch.Tensor], out_dir: Path, last_good: int | None) -> None:
    if torch.isfinite(torch.stack([value.reshape(()).float() for value in losses.values()])).all():
        return  # one check per step (one host sync on a GPU), not one per loss
    bad = [name for name, value in losses.items() if not torch.isfinite(value).all()]
    if bad:
        kept = (
            f"the last good checkpoint (step {last_good}) is kept in {out_dir}"
            if last_good
            else "no checkpoint was written yet"
        )
        raise TrainingDiverged(
            f"training diverged at step {step}: loss {', '.join(bad)} is NaN/Inf; {kept}. "
            "Lower the learning rates (lr_inpainter/lr_g/lr_d/lr_ae), the gan_weight, or turn off amp, "
            "then retrain or --resume"
        )


class _Trainer:
    """Holds the models, optimisers and step for one method; knows how to save and restore all of it."""

    def __init__(self, config: TrainConfig, channels: int, device: torch.device) -> None:
        self.config = config
        self.channels = channels
        self.device = device
        self.dtype = compute_dtype(device, config.cpu_precision, config.amp)
        self.steps_done = 0  # f-AnoGAN switches from the GAN to its encoder half way
        if config.method in GAN_METHODS:
            self._build_gan(channels, device)
        elif config.method == "i3ad":
            self.gen_config = GeneratorConfig(
                channels=channels, width=config.width, attention=config.attention, wide_output=config.wide_output
            )
            self.model = InpaintGenerator(self.gen_config).to(device)
            self.disc = PatchDiscriminator(DiscriminatorConfig(channels=channels, width=config.width)).to(device)
            self.opt = torch.optim.Adam(self.model.parameters(), lr=config.lr_inpainter, betas=(0.5, 0.999))
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=config.lr_d, betas=(0.5, 0.999))
            self.scaler_d = grad_scaler(device, self.dtype)
        else:
            self.gen_config = AutoencoderConfig(
                channels=channels, image_size=config.patch_size, latent_dim=config.latent_dim, width=config.ae_width
            )
            self.model = ConvAutoencoder(self.gen_config).to(device)
            self.disc = None
            self.opt = torch.optim.Adam(self.model.parameters(), lr=config.lr_ae, weight_decay=1e-5)
            self.opt_d = None
        self.scaler = grad_scaler(device, self.dtype)
        if config.method == "i3ad":  # layout and compile: the inpainter's G/D step (the other methods run as before)
            for module in (self.model, self.disc):
                prepare_module(module, config.channels_last, config.compile)

    def reconstructor(self) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        """The unwrapped model and its one-pass reconstruction (the autoencoders, f-AnoGAN and AEGAN)."""
        model = distributed.unwrap(self.model)
        return model, model.reconstruct if self.config.method in GAN_METHODS else model

    def distribute(self) -> None:
        """Wrap G (and D) in DDP when a process group is active (see i3ad.distributed); after `restore`."""
        self.model = distributed.wrap(self.model, self.device)
        if self.disc is not None:
            self.disc = distributed.wrap(self.disc, self.device)

    def _build_gan(self, channels: int, device: torch.device) -> None:
        """One `GanNetwork` (generator, encoder unless AnoGAN, discriminator): Adam on G (+ E), Adam on D."""
        cfg = self.config
        self.gen_config = GanConfig(
            channels=channels,
            image_size=cfg.patch_size,
            latent_dim=cfg.latent_dim,
            width=cfg.width,
            encoder=cfg.method != "anogan",
        )
        self.model = GanNetwork(self.gen_config).to(device)
        self.disc = self.model.discriminator
        # One optimiser for G and E: f-AnoGAN's two halves leave the other's gradients None, which Adam skips.
        trainable = [p for name, p in self.model.named_parameters() if not name.startswith("discriminator.")]
        self.opt = torch.optim.Adam(trainable, lr=cfg.lr_g, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.lr_d, betas=(0.5, 0.999))
        self.scaler_d = grad_scaler(device, self.dtype)

    def step(self, images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        images, masks = images.to(self.device), masks.to(self.device)
        self.steps_done += 1
        if self.config.method in GAN_METHODS:
            if self.config.method == "f-anogan" and self.steps_done > self.config.steps // 2:
                return self._encoder_step(images)
            return self._latent_gan_step(images)
        if self.disc is None:
            return self._autoencoder_step(images)
        return self._gan_step(*to_layout((images, masks), self.config.channels_last))

    def _l1(self, output: torch.Tensor, real: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Mean L1 over the image plus `hole_l1_weight` x the mean L1 over each image's hole pixels.

        The hole term is a mean per image, then over the batch, so data-parallel ranks with equal slices of
        the batch average to exactly the one-process loss (a mean pooled over the batch's holes would not).
        """
        error = (output - real).abs()
        loss = error.mean()
        if self.config.hole_l1_weight:
            per_image = (error * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) * error.shape[1]).clamp(min=1.0)
            loss = loss + self.config.hole_l1_weight * per_image.mean()
        return loss

    def _gan_step(self, real: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        if self.steps_done <= cfg.gan_warmup:
            return self._l1_step(real, masks)
        with autocast(self.device, self.dtype):
            coarse, fine = self.model(real * (1 - masks), masks)
            completed = fine * masks + real * (1 - masks)
            # Discriminator: hinge loss on real vs completed images (generator detached).
            d_real = self.disc(real, masks)
            d_fake = self.disc(completed.detach(), masks)
            loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()

        with autocast(self.device, self.dtype):
            loss_gan = -self.disc(completed, masks).mean()
            loss_l1 = self._l1(coarse, real, masks) + self._l1(fine, real, masks)
            loss_g = cfg.gan_weight * loss_gan + cfg.l1_weight * loss_l1
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return {
            "loss_g": loss_g.detach(),
            "loss_d": loss_d.detach(),
            "loss_l1": loss_l1.detach(),
            "loss_gan": loss_gan.detach(),
        }

    def _l1_step(self, real: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """The warm-up: the generator on its L1 terms alone; the discriminator is neither run nor updated."""
        with autocast(self.device, self.dtype):
            coarse, fine = self.model(real * (1 - masks), masks)
            loss_l1 = self._l1(coarse, real, masks) + self._l1(fine, real, masks)
            loss_g = self.config.l1_weight * loss_l1
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        zero = torch.zeros((), device=real.device)
        return {"loss_g": loss_g.detach(), "loss_d": zero, "loss_l1": loss_l1.detach(), "loss_gan": zero}

    def _latent_gan_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """AnoGAN / f-AnoGAN's first half: G(z) against real images; AEGAN: G(E(x)), with I3AD's L1 term.

        The hinge losses and weights are I3AD's (`_gan_step`); no input is masked.
        """
        cfg, net = self.config, self.model
        with autocast(self.device, self.dtype):
            if cfg.method == "aegan":
                fake = net.reconstruct(real)
            else:
                # Drawn on the CPU so the checkpointed torch RNG state covers it on every device.
                fake = net.generator(torch.randn(len(real), self.gen_config.latent_dim).to(self.device))
            loss_d = F.relu(1 - net.critic(real)).mean() + F.relu(1 + net.critic(fake.detach())).mean()
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()

        with autocast(self.device, self.dtype):
            loss_gan = -net.critic(fake).mean()
            losses = {"loss_gan": loss_gan}
            if cfg.method == "aegan":
                losses["loss_l1"] = (fake.float() - real).abs().mean()
                loss_g = cfg.gan_weight * loss_gan + cfg.l1_weight * losses["loss_l1"]
            else:
                loss_g = loss_gan
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return {"loss_g": loss_g.detach(), "loss_d": loss_d.detach(), **{k: v.detach() for k, v in losses.items()}}

    def _encoder_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """f-AnoGAN's second half ("izif"): train E on |x - G(E(x))|^2 + L_D with G and D frozen."""
        net = self.model
        net.generator.requires_grad_(False)
        # eval: a spectral-normalised layer in train mode updates its power-iteration vector on every call.
        self.disc.requires_grad_(False).eval()
        with autocast(self.device, self.dtype):
            fake = net.reconstruct(real)
            loss_rec = (fake.float() - real).pow(2).mean()
            loss_ld = feature_distance_map(net, real, fake).float().mean()
            loss_e = loss_rec + loss_ld
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss_e).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return {"loss_e": loss_e.detach(), "loss_rec": loss_rec.detach(), "loss_ld": loss_ld.detach()}

    def _autoencoder_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(self.device, self.dtype):
            recon = self.model(real)
        recon = recon.float()
        if self.config.method == "ae-ssim":
            loss = (1 - ssim_map(recon, real)).mean()
        else:
            loss = F.mse_loss(recon, real)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return {"loss": loss.detach()}

    def state(self, step: int, rng: np.random.Generator) -> dict[str, Any]:
        state = {
            "step": step,
            "model": distributed.unwrap(self.model).state_dict(),
            "opt": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "numpy_rng": json.dumps(rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
        }
        if self.disc is not None:
            state.update(
                disc=distributed.unwrap(self.disc).state_dict(),
                opt_d=self.opt_d.state_dict(),
                scaler_d=self.scaler_d.state_dict(),
            )
        return state

    def restore(self, state: dict[str, Any], rng: np.random.Generator) -> int:
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            self.scaler.load_state_dict(state["scaler"])
            if self.disc is not None:
                self.disc.load_state_dict(state["disc"])
                self.opt_d.load_state_dict(state["opt_d"])
                self.scaler_d.load_state_dict(state["scaler_d"])
            rng.bit_generator.state = json.loads(state["numpy_rng"])
            torch.set_rng_state(state["torch_rng"])
            self.steps_done = int(state["step"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"the training state does not match this configuration ({exc}); "
                "train into a new --out folder or use the settings it was trained with"
            ) from exc
        return int(state["step"])


def _model_info(
    config: TrainConfig, trainer: _Trainer, step: int, finished: bool, extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "method": config.method,
        "model_config": asdict(trainer.gen_config),
        "train_config": asdict(config),
        "channels": trainer.channels,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "step": step,
        "finished": finished,
        "i3ad_version": __version__,
        "torch_version": torch.__version__,
        **extra,
    }


def train(
    config: TrainConfig,
    data_root: Path,
    category: str,
    out_dir: Path,
    resume: bool = False,
    callback: Callable[[TrainEvent], None] | None = None,
    progress: bool = True,
    strict: bool = False,
) -> TrainResult:
    """Train `config.method` on `<data_root>/<category>/train/good` into the model folder `out_dir`.

    With `resume`, continues from `out_dir`'s training state (models, optimisers, step, RNG states);
    a run that already reached `config.steps` is not retrained. Raises TrainingDiverged on a NaN/Inf
    loss, leaving the last good checkpoint in place. With `strict`, a category that mixes grey and colour
    training images is an error rather than a warning.
    """
    out_dir = Path(out_dir)
    category_data = MVTecCategory(Path(data_root), category, strict=strict)
    distributed.check_supported(config.method, config.batch_size)
    # Data-parallel: rank 0 alone locks and writes the folder; the others read it once rank 0 has recovered it.
    main = distributed.is_main()
    with exclusive(out_dir, "i3ad train") if main else contextlib.nullcontext():
        if main:
            recover(out_dir)
        distributed.barrier()
        return _train_locked(config, category_data, Path(data_root), out_dir, resume, callback, progress)


def _changed_settings(info: dict[str, Any], config: TrainConfig, category: str) -> list[str]:
    """`name: saved -> new` for each setting a resume would change that it must not."""
    saved = {**info.get("train_config", {}), "category": info.get("category", category)}
    new = {**asdict(config), "category": category}
    return [
        f"{name}: {saved[name]!r} -> {new[name]!r}"
        for name in sorted(new)
        if name not in RESUMABLE_SETTINGS and name in saved and saved[name] != new[name]
    ]


def _train_locked(
    config: TrainConfig,
    category_data: MVTecCategory,
    data_root: Path,
    out_dir: Path,
    resume: bool,
    callback: Callable[[TrainEvent], None] | None,
    progress: bool,
) -> TrainResult:
    category = category_data.category
    state_path = out_dir / TRAINING_STATE
    info = read_model_info(out_dir) if resume and (out_dir / MODEL_JSON).exists() else None
    if info is not None:
        changed = _changed_settings(info, config, category)
        if changed:
            raise ConfigError(
                f"--resume would change settings {out_dir} was trained with ({'; '.join(changed)}); "
                "resume with the saved settings (only " + ", ".join(RESUMABLE_SETTINGS) + " may change) "
                "or train into a new --out folder"
            )
        if info.get("finished") and info.get("step", 0) >= config.steps:
            return TrainResult(out_dir, info["step"], 0.0, already_finished=True)
    if config.method == "ref-stats":
        return _fit_statistics(config, Path(data_root), category_data, out_dir, callback)
    if not resume and state_path.exists():
        raise ConfigError(f"{out_dir} already holds a training run; pass --resume to continue it or pick a new --out")

    device = resolve_device(config.device)
    seed_everything(config.seed)
    images = load_train_images(category_data, config.image_size)
    rng = np.random.default_rng(config.seed)
    trainer = _Trainer(config, category_data.channels, device)
    start = 0
    resumed_from = None
    if resume and state_path.exists():
        start = resumed_from = trainer.restore(load_training_state(state_path), rng)
    if start > config.steps:
        raise ConfigError(
            f"{out_dir} is already at step {start}, past steps={config.steps}; give steps >= {start} to --resume it"
        )
    trainer.distribute()
    main = distributed.is_main()
    probe = recon_probe = None
    if config.method in ("i3ad", *PROBED_METHODS) and config.holdout:
        # The same held-out slice on every rank (a fixed split), so the ranks train on the same images.
        kept, held = holdout_indices(len(images), config.holdout)
        if len(held) and main and config.method == "i3ad":
            probe = HoleProbe.build(images[held])
        elif len(held) and main:
            recon_probe = ReconstructionProbe.build(images[held], images[kept], config.patch_size)
        images = images[kept]
    batches = _Batches(images, config, rng)
    extra = {
        "category": category,
        "data_root": str(Path(data_root).resolve()),
        "seed": config.seed,
        "device": str(device),
    }
    if distributed.active():
        extra["workers"] = distributed.world_size()
    log_path = out_dir / TRAIN_LOG
    if main:
        _truncate_log(log_path, start)

    def checkpoint(step: int, finished: bool) -> None:
        if not main:  # rank 0 writes the checkpoint every rank resumes from
            return
        info = _model_info(config, trainer, step, finished, extra)
        weights = distributed.unwrap(trainer.model).state_dict()
        save_checkpoint(out_dir, weights, info, training_state=trainer.state(step, rng))

    bar = _progress_bar(progress and main, config.steps, start)
    began = time.monotonic()
    last_good = start or None
    metrics: dict[str, float] = {}
    step = start
    trainer.model.train()
    if resumed_from is not None and start == config.steps:
        # Killed after the final training state but before model.json said finished: nothing left to
        # train, but the folder must still be rewritten as the finished model.
        checkpoint(step, finished=True)
        if callback is not None:
            callback(TrainEvent(step=step, metrics={}, checkpoint=out_dir if main else None, finished=True))
    while step < config.steps:
        # Data-parallel: each rank trains on its slice of the global batch; losses are the global-batch means.
        losses = distributed.average(trainer.step(*distributed.shard(*batches.next())))
        step += 1
        _check_finite(step, losses, out_dir, last_good)
        budget_spent = config.max_seconds is not None and time.monotonic() - began >= config.max_seconds
        budget_spent = distributed.any_rank(budget_spent, device)
        done = step >= config.steps or budget_spent
        if step % config.log_every == 0 or done or step % config.checkpoint_every == 0:
            metrics = {k: float(v) for k, v in losses.items()}
            if probe is not None:  # rank 0 only, on the unwrapped generator: no collective to wait on
                metrics.update(probe.measure(distributed.unwrap(trainer.model)))
                extra["inpainter"] = inpainter_summary(metrics, step, probe.held_out, len(probe.images))
            if recon_probe is not None:
                metrics.update(recon_probe.measure(*trainer.reconstructor()))
                extra["reconstruction"] = reconstruction_summary(metrics, step, len(recon_probe.images))
            if main:
                with log_path.open("a") as log:
                    log.write(json.dumps({"step": step, "time": round(time.monotonic() - began, 3), **metrics}) + "\n")
            bar.update(step - bar.n)
            bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()})
        wrote = None
        if step % config.checkpoint_every == 0 or done:
            checkpoint(step, finished=done)
            last_good = step
            wrote = out_dir if main else None
        if callback is not None and (step % config.checkpoint_every == 0 or done or step % config.log_every == 0):
            callback(TrainEvent(step=step, metrics=dict(metrics), checkpoint=wrote, finished=done))
        if budget_spent:
            break
    bar.close()
    return TrainResult(out_dir, step, time.monotonic() - began, resumed_from=resumed_from, last_metrics=metrics)


def _fit_statistics(
    config: TrainConfig,
    data_root: Path,
    category_data: MVTecCategory,
    out_dir: Path,
    callback: Callable[[TrainEvent], None] | None,
) -> TrainResult:
    """The no-learning reference: one pass of statistics over the full-size normals (no steps, crops or seed)."""
    began = time.monotonic()
    statistics = fit_reference(load_train_images(category_data, config.image_size))
    info = {
        "method": config.method,
        "model_config": statistics.config,
        "train_config": asdict(config),
        "channels": statistics.channels,
        "image_size": config.image_size,
        "patch_size": config.image_size,
        "step": config.steps,  # "finished": a resumed run does not refit
        "finished": True,
        "i3ad_version": __version__,
        "torch_version": torch.__version__,
        "category": category_data.category,
        "data_root": str(data_root.resolve()),
        "seed": config.seed,
        "device": "cpu",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model_folder(out_dir, statistics.state_dict(), info)
    if callback is not None:
        callback(TrainEvent(step=config.steps, metrics={}, checkpoint=out_dir, finished=True))
    return TrainResult(out_dir, config.steps, time.monotonic() - began)


def _log_records(log_path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) for each line of a training log; a torn last line (a killed write) is dropped."""
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append((line, json.loads(line)))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise CheckpointError(
                f"{log_path} line {number} is not valid JSON ({exc}); delete the line or the file to continue"
            ) from exc
    return records


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log lines past `step` (written by a run that died after its last checkpoint) and a torn last line."""
    if not log_path.exists():
        return
    lines = log_path.read_text().splitlines()
    kept = [line for line, record in _log_records(log_path) if record["step"] <= step]
    if kept != [line for line in lines if line.strip()]:
        atomic_write_text(log_path, "".join(line + "\n" for line in kept))


def _progress_bar(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


def read_train_log(model_dir: Path) -> list[dict[str, float]]:
    """The per-step loss records of a model folder (for plots)."""
    path = Path(model_dir) / TRAIN_LOG
    if not path.exists():
        return []
    return [record for _, record in _log_records(path)]
