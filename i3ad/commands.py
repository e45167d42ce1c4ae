"""The `i3ad` subcommands (make-data, train, detect, calibrate): their parser and what each runs.

Imported by `i3ad.cli` only once a subcommand is named, so `i3ad`, `i3ad --help` and `i3ad --version` never load
torch.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import atomic_write_json
from .calibrate import CALIBRATION_IMAGES, CALIBRATION_ITERATIONS, CALIBRATION_TOLERANCE, calibrate_model
from .checkpoint import MODEL_JSON, read_json, read_model_info
from .checks import check_mapping
from .config_file import read_yaml
from .data import DEFECT_SETS, SYNTHETIC_CATEGORIES, MVTecCategory, load_test_set, make_dataset, split_test_items
from .decision import DEFAULT_TARGET_FPR, DecisionRule, choose_operating_point
from .errors import ConfigError, I3ADError
from .evaluate import AUROC_KEYS, PRO_KEYS, evaluate
from .intervals import Interval, describe
from .loading import detection_settings
from .precision import CPU_PRECISIONS
from .scorers import (
    COMPILE_BACKENDS,
    METHOD_NAMES,
    METHODS,
    SCORE_REDUCTIONS,
    TRAIN_METHODS,
    DetectionSettings,
    ProjectionSettings,
)
from .scoring import (
    DETECTOR_JSON,
    DetectorConfig,
    load_detector,
    make_detector_scorer,
    score_folder,
    write_detector_json,
)
from .train import TrainConfig, train
from .usage import COMMANDS, DESCRIPTION

DETECTION_FLAGS = tuple(f.name for f in fields(DetectionSettings))  # --threshold, --patch-size, ...
# `i3ad detect --model <scheme>:/...` finds a model folder through a plug-in registered under this entry-point
# group: name = URI scheme, value = `(uri: str, tracking_uri: str | None) -> Path` (the `tracking` package
# registers "models" and "runs"), so `i3ad` itself never imports the tracking layer or MLflow.
MODEL_RESOLVERS = "i3ad.model_resolvers"
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")  # two or more letters, so a drive letter (C:/) is a path


def _categories(value: str | None) -> list[str] | None:
    return [c.strip() for c in value.split(",") if c.strip()] if value else None


def cmd_make_data(args: argparse.Namespace) -> int:
    """`i3ad make-data`: write the synthetic dataset."""
    written = make_dataset(
        Path(args.out), size=args.size, seed=args.seed, categories=_categories(args.categories), defects=args.defects
    )
    print(f"wrote synthetic categories {', '.join(written)} ({args.defects} defect kinds) to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """`i3ad train`: train a model folder (settings from --config, then flags; with --resume, the saved ones first)."""
    values = read_yaml(args.config) if args.config else {}
    values = check_mapping(values["train"], f"`train` in {args.config}") if "train" in values else values
    saved = Path(args.out) / MODEL_JSON
    if args.resume and saved.exists():  # a setting not given keeps the value the folder was trained with
        values = {**read_model_info(Path(args.out)).get("train_config", {}), **values}
    overrides = {
        "method": args.method,
        "steps": args.steps,
        "image_size": args.image_size,
        "crop_size": args.crop_size,
        "batch_size": args.batch_size,
        "width": args.width,
        "device": args.device,
        "seed": args.seed,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig.from_dict(values)
    result = train(
        config,
        Path(args.data_root),
        args.category,
        Path(args.out),
        resume=args.resume,
        progress=not args.no_progress,
        strict=args.strict,
    )
    if result.already_finished:
        print(f"{args.out} already finished {result.steps} steps; nothing to do")
    elif config.method == "ref-stats":
        print(f"fitted the ref-stats statistics of {args.category} in {result.seconds:.1f}s -> {args.out}")
    else:
        print(
            f"trained {config.method} on {args.category} to step {result.steps} in {result.seconds:.1f}s -> {args.out}"
        )
    return 0


def _detection_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The detection flags given on the command line (unset flags keep the model folder's settings)."""
    return {k: getattr(args, k) for k in DETECTION_FLAGS if getattr(args, k) is not None}


def _uri_scheme(spec: str) -> str | None:
    match = _URI.match(spec)
    return match.group(1) if match else None


def _resolver(scheme: str) -> Callable[[str, str | None], Path]:
    found = entry_points(group=MODEL_RESOLVERS, name=scheme)
    if not found:
        installed = sorted(ep.name for ep in entry_points(group=MODEL_RESOLVERS))
        raise ConfigError(
            f"no resolver for {scheme}:/ model URIs is installed (entry points {MODEL_RESOLVERS!r}: "
            f"{', '.join(installed) or 'none'}); models:/ and runs:/ URIs are resolved by this project's `tracking` "
            "package: install the project with `pip install -e .`, or pass a model folder"
        )
    return next(iter(found)).load()


def _model_folder(spec: str, tracking_uri: str | None) -> Path:
    """A local model folder for `--model`: the folder itself, or one a resolver fetched for a `scheme:/` URI."""
    scheme = _uri_scheme(spec)
    if scheme is None:
        return Path(spec)
    return Path(_resolver(scheme)(spec, tracking_uri))


def _check_detect_args(args: argparse.Namespace) -> None:
    if args.images is not None:
        extra = [flag for flag, value in (("--data-root", args.data_root), ("--category", args.category)) if value]
        if extra:
            raise ConfigError(
                f"--images scores a folder of new images; drop {' and '.join(extra)} (they select a labelled test set)"
            )
    elif not (args.data_root and args.category):
        raise ConfigError("give --data-root and --category (a labelled test set) or --images DIR (new images to score)")
    if args.save_operating_point and (args.images is not None or args.split != "val" or _uri_scheme(args.model)):
        raise ConfigError(
            "--save-operating-point chooses the threshold on the validation normals of a local model folder: "
            "use it with --split val, --data-root, --category and a folder for --model"
        )


def _apply_method_flags(args: argparse.Namespace, model_method: str, config: DetectorConfig) -> None:
    """--method and --proj-* flags: a test-time method on the model, e.g. ae-l2+proj on an ae-l2 model."""
    if args.method is not None:
        config.method = None if args.method == model_method else args.method
    proj = {"iterations": args.proj_iterations, "lam": args.proj_lambda, "step": args.proj_step}
    proj = {k: v for k, v in proj.items() if v is not None}
    if proj:
        if not METHODS[config.method or model_method].projection_keys:
            raise ConfigError(
                "--proj-* flags set the projection (or AnoGAN's search, or the +ld weight); "
                "add --method ae-l2+proj or ae-ssim+proj"
            )
        config.projection = {**(config.projection or {}), **proj}


def cmd_detect(args: argparse.Namespace) -> int:
    """`i3ad detect`: evaluate on a labelled split (REPORT.json) or score a folder of new images."""
    _check_detect_args(args)
    model, config = load_detector(_model_folder(args.model, args.tracking_uri), args.device)
    config.settings = DetectionSettings.from_dict({**asdict(config.settings), **_detection_flags(args)})
    if args.image_size:
        config = replace(config, image_size=args.image_size)  # re-checked by DetectorConfig
    _apply_method_flags(args, model.method, config)
    if args.images is not None:
        rows = score_folder(model, config, Path(args.images), Path(args.out))
        out = Path(args.out)
        print(
            f"scored {len(rows)} images ({model.method}, {config.anomaly_map} map); "
            f"scores -> {out / 'scores.csv'}, overlays -> {out / 'overlays'}"
        )
        if config.operating is None:
            print(
                "no operating point in this model folder, so no labels: a sweep's final model folders have one; "
                "for your own, run `i3ad detect --split val --save-operating-point` on its labelled data"
            )
        else:
            flagged = sum(row["label"] == "anomalous" for row in rows)
            point = config.operating
            print(
                f"{flagged} of {len(rows)} labelled anomalous: score > {point.threshold:.4g}, the threshold that "
                f"{point.target_fpr:.0%} of {point.normals} validation normals may exceed"
            )
        return 0
    settings = config.settings
    category = MVTecCategory(Path(args.data_root), args.category)
    items = category.test_items()
    if args.split != "all":
        items = split_test_items(items, val_fraction=args.val_fraction, seed=args.split_seed)[args.split]
    image_size = config.image_size
    test_set = load_test_set(category, items, image_size)
    result = evaluate(
        make_detector_scorer(model, config),
        test_set.images,
        test_set.masks,
        test_set.labels,
        settings,
        include_pro=not args.no_pro,
    )
    point = None
    if args.split == "val" or args.save_operating_point:
        normals = (result.scores_ssim if config.anomaly_map == "ssim" else result.scores_l2)[test_set.labels == 0]
        point = choose_operating_point(normals, DecisionRule(args.target_fpr), config.anomaly_map)
    report = {
        **result.report,
        **({"operating_point": point.to_json()} if point is not None else {}),
        "method": config.method or model.method,
        **(
            {"projection": asdict(ProjectionSettings.from_dict(config.projection or {}))}
            if config.method or config.projection is not None
            else {}
        ),
        "category": args.category,
        "split": args.split,
        "split_seed": args.split_seed,
        "val_fraction": args.val_fraction,
        "image_size": image_size,
        "model": args.model if _uri_scheme(args.model) else str(Path(args.model).resolve()),
    }
    atomic_write_json(Path(args.out), report)
    intervals = report["intervals"]
    for key in (*AUROC_KEYS, *PRO_KEYS):
        if key in report:
            interval = Interval(*intervals[key]) if key in intervals else None
            print(f"{key:18s} {describe(report[key], interval)}")
    print(f"(95% bootstrap intervals over the {report['images']} images, stratified by label)")
    print(f"{report['images']} images, {report['images_per_second']} images/s; report -> {args.out}")
    if args.save_operating_point and point is not None:
        folder = Path(args.model)
        updated = replace(config, operating=point)
        saved = read_json(folder / DETECTOR_JSON) if (folder / DETECTOR_JSON).exists() else {}
        write_detector_json(folder, updated, {k: v for k, v in saved.items() if k not in updated.to_json()})
        print(
            f"operating point: {config.anomaly_map} score > {point.threshold:.4g} is anomalous "
            f"({point.val_fpr:.0%} of {point.normals} val normals above it, target {point.target_fpr:.0%}); "
            f"saved in {folder / 'detector.json'}"
        )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """`i3ad calibrate`: choose U by the paper's rule; saved as the model folder's `calibration`."""
    model_info = read_model_info(Path(args.model))
    result = calibrate_model(
        Path(args.model),
        Path(args.data_root),
        args.category,
        images=args.max_images,
        iterations=args.iterations,
        tolerance=args.tolerance,
        seed=args.seed,
        base=detection_settings(model_info, _detection_flags(args)),
        device=args.device,
    )
    for point in result["curve"]:
        print(f"U={point['threshold']:.2f}  error={point['error']:.4f}  flagged={point['flagged_fraction']:.4f}")
    status = "meets" if result["met_tolerance"] else "does NOT meet (the U nearest a partial mask taken)"
    print(f"chosen U={result['threshold']:.2f} ({status} tolerance {args.tolerance}); saved in {args.model}/model.json")
    if args.out:
        atomic_write_json(Path(args.out), result)
    return 0


def _add_detection_flags(parser: argparse.ArgumentParser, iterations_default: int | None = None) -> None:
    defaults = DetectionSettings()
    parser.add_argument(
        "--threshold",
        type=float,
        help=f"U: re-inpaint pixels whose SSIM is below it (default: the model's chosen or calibrated U, else "
        f"{defaults.threshold})",
    )
    parser.add_argument(
        "--patch-size", type=int, help=f"checkerboard cell size in pixels (default {defaults.patch_size})"
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=iterations_default,
        help=f"N detection iterations (default {iterations_default or defaults.iterations})",
    )
    parser.add_argument(
        "--stop-eps",
        type=float,
        help=f"stop an image when its mask changes by <= eps * its area (default {defaults.stop_eps})",
    )
    parser.add_argument(
        "--score",
        choices=SCORE_REDUCTIONS,
        help=f"image score = {' or '.join(SCORE_REDUCTIONS)} of the anomaly map (default {defaults.score})",
    )
    parser.add_argument(
        "--border",
        type=int,
        help=f"pixels of the map's border left out of the image score (default {defaults.border}, the SSIM "
        "window's radius; 0 scores the whole map)",
    )
    parser.add_argument(
        "--batch-size", type=int, help=f"generator inputs per forward pass (default {defaults.batch_size})"
    )
    parser.add_argument(
        "--compile",
        choices=COMPILE_BACKENDS,
        help="torch.compile the generator: faster passes after a one-off compile (worth it for many images)",
    )
    parser.add_argument(
        "--cpu-precision",
        choices=CPU_PRECISIONS,
        help="generator passes on a CPU: fp32, bf16, or auto = bf16 where the CPU has native bf16 (default fp32)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `i3ad` command."""
    parser = argparse.ArgumentParser(prog="i3ad", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"i3ad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-data", help=COMMANDS["make-data"])
    p.add_argument("out", help="output folder")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--categories", help=f"comma-separated subset of {', '.join(SYNTHETIC_CATEGORIES)}")
    p.add_argument(
        "--defects",
        choices=DEFECT_SETS,
        default="all",
        help="defect kinds to write: structural (the pattern broken, local colour and contrast kept), "
        "colour (intensity/colour outliers) or all (default)",
    )
    p.set_defaults(func=cmd_make_data)

    p = sub.add_parser("train", help=COMMANDS["train"])
    p.add_argument("--data-root", required=True, help="dataset root in the MVTec AD layout")
    p.add_argument("--category", required=True)
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--method", choices=TRAIN_METHODS, help=f"(default {TrainConfig.method})")
    p.add_argument("--config", type=Path, help="YAML file of training settings (a `train:` mapping or top-level keys)")
    p.add_argument("--steps", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--crop-size", type=int, help="train on random crops of this size (textures)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--width", type=int, help="generator base width (16 for CPU, 48 = DeepFill v2)")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda ...")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the folder's newest checkpoint with its saved settings (only --steps and --device "
        "may change)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--strict", action="store_true", help="fail (instead of warning) when train/good mixes grey and colour images"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("detect", help=COMMANDS["detect"])
    p.add_argument(
        "--model",
        required=True,
        help="model folder written by `i3ad train`, or models:/i3ad-<category>@champion, runs:/<run_id>/detector",
    )
    p.add_argument("--data-root", help="dataset root in the MVTec AD layout (with --category)")
    p.add_argument("--category")
    p.add_argument(
        "--images",
        help="score this folder (or file) of new images instead; --out is then a folder for scores.csv and overlays/",
    )
    p.add_argument("--tracking-uri", help="MLflow store for models:/ and runs:/ URIs (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--split", choices=("val", "test", "all"), default="test")
    p.add_argument("--val-fraction", type=float, default=0.5)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--image-size", type=int, help="test image size (default: the training image size)")
    p.add_argument("--no-pro", action="store_true", help="skip PRO (the slowest metric)")
    p.add_argument(
        "--target-fpr",
        type=float,
        default=DEFAULT_TARGET_FPR,
        help=f"with --split val: the operating threshold lets this rate of val normals above it "
        f"(default {DEFAULT_TARGET_FPR:g})",
    )
    p.add_argument(
        "--save-operating-point",
        action="store_true",
        help="with --split val: save the operating threshold into the model folder's detector.json, so "
        "`detect --images` labels images normal / anomalous",
    )
    p.add_argument("--out", required=True, help="REPORT.json to write (with --images: an output folder)")
    _add_detection_flags(p)
    p.add_argument(
        "--method",
        choices=METHOD_NAMES,
        help="test-time method (default: the model's own); +proj on an ae-l2 / ae-ssim model, +ld on f-anogan / aegan",
    )
    proj = ProjectionSettings()
    p.add_argument("--proj-iterations", type=int, help=f"projection gradient steps (default {proj.iterations})")
    p.add_argument("--proj-lambda", type=float, help=f"projection weight of |x - x0|_1 (default {proj.lam})")
    p.add_argument("--proj-step", type=float, help=f"projection step size alpha (default {proj.step})")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("calibrate", help=COMMANDS["calibrate"])
    p.add_argument("--model", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--category", required=True)
    p.add_argument(
        "--tolerance",
        type=float,
        default=CALIBRATION_TOLERANCE,
        help=f"max mean |x0 - x_N| on normal images, in grey levels 0..255 "
        f"(default {CALIBRATION_TOLERANCE:g}, the paper's)",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=CALIBRATION_IMAGES,
        help=f"training images to calibrate on (default {CALIBRATION_IMAGES})",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the calibration curve to this JSON file")
    _add_detection_flags(p, iterations_default=CALIBRATION_ITERATIONS)
    p.set_defaults(func=cmd_calibrate)
    return parser


def run(argv: Sequence[str]) -> int:
    """Parse a subcommand's arguments and run it; user errors print one clear line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except I3ADError as exc:
        print(f"i3ad {args.command}: error: {exc}", file=sys.stderr)
        return 2
