"""Reader for datasets in the MVTec AD folder layout.

```
<root>/<category>/train/good/*.png
<root>/<category>/test/<defect>/*.png            # defect "good" = normal, label 0
<root>/<category>/ground_truth/<defect>/<stem>_mask.png   # not for test/good
```

Images come back as float32 ``(C, H, W)`` arrays / tensors in ``[-1, 1]``; ground-truth masks as
``bool (H, W)`` with ``True = defect``. Every problem with the files raises ``DatasetError`` naming the
file or folder and what was expected.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from i3ad.errors import ConfigError, DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Modes PIL reports for single-channel images; everything else is read as RGB.
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class TestItem:
    """One test image: its path, ground-truth mask path (None for ``good``), defect name and label."""

    __test__ = False  # not a pytest test class

    path: Path
    mask_path: Path | None
    defect: str
    label: int


@dataclass
class TestSet:
    """Decoded test images of one category, ready for detection."""

    __test__ = False

    images: np.ndarray  # float32 (N, C, H, W) in [-1, 1]
    masks: np.ndarray  # bool (N, H, W), True = defect; all False for good images
    labels: np.ndarray  # int64 (N,), 0 = good, 1 = defective
    defects: list[str]
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.paths)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (any of ``IMAGE_SUFFIXES``, case-insensitive), sorted by name."""
    return sorted(
        (
            p
            for p in folder.iterdir()
            # "._x.png" AppleDouble files from macOS copies are not images.
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        ),
        key=lambda p: p.name,
    )


def _require_images(folder: Path, what: str) -> list[Path]:
    images = list_images(folder)
    if not images:
        raise DatasetError(f"{folder} contains no images; {what} must hold image files ({', '.join(IMAGE_SUFFIXES)}).")
    return images


class MVTecCategory:
    """One category folder in MVTec layout; checks the folder structure on construction."""

    def __init__(self, root: Path | str, category: str, strict: bool = False):
        self.root = Path(root)
        self.category = category
        self.strict = strict  # mixed colour modes in train/good: an error instead of a warning
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise DatasetError(
                f"dataset root {self.root} {what}; pass the folder that holds the category folders "
                "(MVTec layout <root>/<category>/train/good), or create synthetic data with `i3ad make-data`."
            )
        self.path = self.root / category
        if not self.path.is_dir():
            found = [p.name for p in _visible_dirs(self.root)]
            listed = ", ".join(found) if found else "none (the folder has no sub-folders)"
            raise DatasetError(
                f"category {category!r} not found: {self.path} is missing. Categories in {self.root}: {listed}."
            )
        self.train_dir = self.path / "train" / "good"
        self.test_dir = self.path / "test"
        self.ground_truth_dir = self.path / "ground_truth"
        if not self.train_dir.is_dir():
            raise DatasetError(
                f"{self.train_dir} is missing; category {category!r} needs train/good/ with normal training images."
            )
        if not self.test_dir.is_dir():
            raise DatasetError(
                f"{self.test_dir} is missing; category {category!r} needs test/good/ and test/<defect>/ folders "
                "of test images."
            )
        self._channels: int | None = None

    def __repr__(self) -> str:
        return f"MVTecCategory({str(self.root)!r}, {self.category!r})"

    @property
    def channels(self) -> int:
        """1 for grayscale categories, 3 for colour ones, from the modes of all training images.

        Only the file headers are read. Mixed modes warn (or raise DatasetError when `strict`) and the
        majority wins, colour on a tie (a grey image converts to RGB without loss).
        """
        if self._channels is None:
            grey, colour = [], []
            for path in self.train_paths():
                try:
                    with Image.open(path) as img:
                        mode = img.mode
                except _READ_ERRORS as exc:
                    raise _unreadable(path, exc) from exc
                (grey if mode in _GRAY_MODES else colour).append(path)
            self._channels = 1 if len(grey) > len(colour) else 3
            if grey and colour:
                minority = colour if self._channels == 1 else grey
                message = (
                    f"{self.train_dir} mixes grey ({len(grey)}) and colour ({len(colour)}) images, e.g. "
                    f"{minority[0].name}; the category is read as {'grey' if self._channels == 1 else 'colour'} "
                    f"({self._channels} channel{'s' if self._channels == 3 else ''})"
                )
                if self.strict:
                    raise DatasetError(f"{message}; convert the images to one mode (or drop --strict)")
                warnings.warn(message, stacklevel=2)
        return self._channels

    def train_paths(self) -> list[Path]:
        """Normal training images in ``train/good``, sorted by name."""
        return _require_images(self.train_dir, "train/good")

    def test_items(self) -> list[TestItem]:
        """All test images, grouped by defect folder (sorted), each with its ground-truth mask path."""
        defect_dirs = _visible_dirs(self.test_dir)
        if not defect_dirs:
            raise DatasetError(
                f"{self.test_dir} has no sub-folders; expected test/good/ and test/<defect>/ folders of images."
            )
        items: list[TestItem] = []
        for folder in defect_dirs:
            defect = folder.name
            for path in _require_images(folder, f"test/{defect}"):
                if defect == "good":
                    items.append(TestItem(path, None, defect, 0))
                else:
                    items.append(TestItem(path, self._mask_path(defect, path), defect, 1))
        return items

    def _mask_path(self, defect: str, image: Path) -> Path:
        expected = self.ground_truth_dir / defect / f"{image.stem}_mask.png"
        if expected.is_file():
            return expected
        for suffix in IMAGE_SUFFIXES:  # own data sets sometimes store masks in another format
            for candidate in (expected.with_suffix(suffix), expected.with_suffix(suffix.upper())):
                if candidate.is_file():
                    return candidate
        raise DatasetError(
            f"defect image {image} has no ground-truth mask: expected {expected}. "
            "Every image in test/<defect>/ (other than test/good/) needs a mask of the same size."
        )


def _unreadable(path: Path, exc: BaseException) -> DatasetError:
    if not path.exists():
        return DatasetError(f"image file {path} does not exist.")
    return DatasetError(
        f"cannot read image file {path} ({type(exc).__name__}: {exc}); it is corrupt or truncated - "
        "re-download it or remove it from the dataset."
    )


def _read(path: Path, channels: int) -> Image.Image:
    """Fully decode ``path`` and convert it to an 8-bit ``L`` (channels=1) or ``RGB`` (channels=3) image."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}.")
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here rather than later
            if img.mode in _WIDE_MODES:
                img = _to_8bit(img)
            return img.convert("L" if channels == 1 else "RGB")
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc


_ROWS = 256  # rows converted at a time: a 16-bit image never gets a full-size wide copy


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey image as 8-bit `L`, rescaled (not clipped) to 0..255.

    Converted a block of rows at a time, so the only full-size arrays are the source's own values and the
    8-bit result (a 13000^2 16-bit PNG needed 4.5 GB as one float64 copy). Equal to
    `rint(clip(x / top * 255, 0, 255))`: for integers the rounding has no ties (255 and 65535 share no factor 2).
    """
    # PIL's convert("L") clips 16-bit values at 255 instead of rescaling them.
    arr = np.asarray(img)
    out = np.empty(arr.shape, dtype=np.uint8)
    peak = arr.max() if arr.size else 0
    if img.mode == "F":
        top = 1.0 if arr.size and peak <= 1.0 else 255.0
        for start in range(0, arr.shape[0], _ROWS):
            block = arr[start : start + _ROWS].astype(np.float64)
            out[start : start + _ROWS] = np.clip(np.rint(block / top * 255.0), 0, 255)
    else:
        top = 65535 if img.mode.startswith("I;16") or peak > 255 else 255
        for start in range(0, arr.shape[0], _ROWS):
            block = np.clip(arr[start : start + _ROWS].astype(np.int64), 0, top)
            out[start : start + _ROWS] = (block * 255 + top // 2) // top
    return Image.fromarray(out, "L")


def _resize(img: Image.Image, size: int | None, resample: Image.Resampling) -> Image.Image:
    if size is None or img.size == (size, size):
        return img
    return img.resize((size, size), resample)


def _chw_uint8(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def _to_unit_range(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _load_uint8(path: Path, size: int | None, channels: int) -> tuple[np.ndarray, tuple[int, int]]:
    img = _read(path, channels)
    native = (img.height, img.width)
    return _chw_uint8(_resize(img, size, Image.Resampling.BICUBIC)), native


def load_image(path: Path | str, size: int | None, channels: int) -> np.ndarray:
    """Read an image as float32 ``(C, H, W)`` in ``[-1, 1]``, bicubically resized to ``size x size``.

    ``size=None`` keeps the native resolution. Non-square images are stretched to the square.
    """
    arr, _ = _load_uint8(Path(path), size, channels)
    return _to_unit_range(arr)


def load_mask(
    path: Path | str,
    size: int | None,
    image_shape: tuple[int, int] | None,
    image_path: Path | str | None = None,
) -> np.ndarray:
    """Read a ground-truth mask as bool ``(H, W)``, nearest-resized to ``size``.

    A 0/1 mask (largest value 1, 8- or 16-bit) marks every 1 as defect; any other mask marks the pixels
    above half its scale (> 127 of 255, > 32767 of 65535), so soft or compressed edges stay normal.

    ``image_shape`` is the *native* ``(H, W)`` of the image the mask belongs to; a mask of another size
    raises ``DatasetError`` (naming ``image_path`` too when given). ``None`` skips the check.
    """
    path = Path(path)
    try:
        with Image.open(path) as raw:
            raw.load()
            # Wide modes keep their raw values (an 8-bit conversion would turn a 16-bit 1 into 0).
            values = np.asarray(raw if raw.mode in _WIDE_MODES else raw.convert("L"))
            mode = raw.mode
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    top = float(values.max()) if values.size else 0.0
    if values.dtype.kind == "f":  # a float mask: in [0, 1] or [0, 255]
        defect = values > (0.5 if top <= 1.0 else 127.5)
    elif top <= 1:  # a 0/1 mask
        defect = values > 0
    else:
        defect = values > (32767 if mode.startswith("I;16") or top > 255 else 127)
    img = Image.fromarray(defect.astype(np.uint8) * 255, "L")
    if image_shape is not None and (img.height, img.width) != tuple(image_shape):
        h, w = image_shape
        of_image = f"image {image_path}" if image_path is not None else "its image"
        raise DatasetError(
            f"mask {path} is {img.width}x{img.height} pixels but {of_image} is {w}x{h}; "
            "a ground-truth mask must have exactly the size of its image."
        )
    return np.asarray(_resize(img, size, Image.Resampling.NEAREST)) > 0


def load_test_set(category: MVTecCategory, items: list[TestItem], image_size: int | None) -> TestSet:
    """Decode ``items`` (from ``category.test_items()`` or a split of them) resized to ``image_size``.

    Detection runs on whole images, so texture categories trained on crops are tested with
    ``image_size`` equal to the crop size (or a size the model accepts). ``image_size=None`` keeps the
    native resolution, which must then be the same for all images.
    """
    channels = category.channels
    images, masks = [], []
    for item in items:
        image, native = _load_uint8(item.path, image_size, channels)
        if item.mask_path is not None:
            mask = load_mask(item.mask_path, image_size, native, image_path=item.path)
        else:
            mask = np.zeros(image.shape[1:], dtype=bool)
        if images and image.shape != images[0].shape:
            raise DatasetError(
                f"{item.path} is {image.shape[2]}x{image.shape[1]} but {items[0].path} is "
                f"{images[0].shape[2]}x{images[0].shape[1]}; pass an image_size to resize all test images to one size."
            )
        images.append(image)
        masks.append(mask)
    if images:
        stacked = _to_unit_range(np.stack(images))
        mask_arr = np.stack(masks)
    else:
        side = image_size or 0
        stacked = np.zeros((0, channels, side, side), dtype=np.float32)
        mask_arr = np.zeros((0, side, side), dtype=bool)
    return TestSet(
        images=stacked,
        masks=mask_arr,
        labels=np.array([item.label for item in items], dtype=np.int64),
        defects=[item.defect for item in items],
        paths=[item.path for item in items],
    )


class TrainImages(torch.utils.data.Dataset):
    """Normal training images of a category as float32 tensors ``(C, H, W)`` in ``[-1, 1]``.

    Each image is resized to ``image_size``; with ``crop_size`` set, every access returns a random
    ``crop_size`` crop of it (the paper's texture setup: 128x128 patches of images zoomed to 512x512).
    Decoded, resized images are cached in memory as uint8.

    Crops are deterministic given ``seed``: the crop for an access depends on (seed, epoch, index, how
    often this index was read before in this process). In DataLoader worker processes the per-process
    count restarts each epoch, so call ``set_epoch`` once per epoch to get fresh crops there.
    """

    def __init__(self, category: MVTecCategory, image_size: int, crop_size: int | None = None, seed: int = 0):
        if image_size < 1:
            raise ConfigError(f"image_size must be a positive number of pixels, got {image_size}.")
        if crop_size is not None and not 1 <= crop_size <= image_size:
            raise ConfigError(f"crop_size must be between 1 and image_size ({image_size}), got {crop_size}.")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}.")
        self.category = category
        self.image_size = image_size
        self.crop_size = crop_size
        self.seed = seed
        self.paths = category.train_paths()
        self.channels = category.channels
        self.epoch = 0
        self._cache: dict[int, np.ndarray] = {}
        self._reads: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Select the crops of another epoch (and restart the per-index read counts)."""
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}.")
        self.epoch = epoch
        self._reads.clear()

    def preload(self) -> None:
        """Decode every image now, so an unreadable file fails before training starts."""
        for index in range(len(self)):
            self._image(index)

    def _image(self, index: int) -> np.ndarray:
        if index not in self._cache:
            self._cache[index], _ = _load_uint8(self.paths[index], self.image_size, self.channels)
        return self._cache[index]

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} training images")
        image = self._image(index)
        if self.crop_size is not None:
            count = self._reads.get(index, 0)
            self._reads[index] = count + 1
            rng = np.random.default_rng([self.seed, self.epoch, index, count])
            top, left = rng.integers(0, self.image_size - self.crop_size + 1, size=2)
            image = image[:, top : top + self.crop_size, left : left + self.crop_size]
        return torch.from_numpy(_to_unit_range(image))
