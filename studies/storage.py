"""Trained models published to the sweep's Tune storage, where detection trials and the driver find them.

Tune's own checkpoints serve resuming a training trial; once a model is trained (and calibrated) the
trial copies the model folder to `<storage>/models/<model key>/`, a local path or any pyarrow URI
(s3://, gs://, an NFS path), so no process ever needs another machine's disk.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs

from i3ad.atomic import temporary_name
from i3ad.checkpoint import MODEL_JSON, WEIGHTS_FILE
from i3ad.train import TRAIN_LOG

PUBLISHED = (WEIGHTS_FILE, TRAIN_LOG, MODEL_JSON)  # model.json last: its presence marks a complete copy


def safe_name(key: str) -> str:
    """A model key (`carpet/i3ad/width=8`) as one folder name."""
    return key.replace("/", "__").replace(",", "_").replace("=", "-")


def model_uri(storage: str, key: str) -> str:
    """Where a trained model is published in the sweep's Tune storage."""
    return f"{storage.rstrip('/')}/models/{safe_name(key)}"


def filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem and path of a local path or URI (s3://, gs://, an NFS path)."""
    return pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))


def write_atomically(fs: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a move, so readers never see half a file."""
    # Not i3ad.atomic.atomic_write: `path` may be remote, where there is no os.replace (S3 has no rename).
    folder, _, name = path.rpartition("/")
    temporary = f"{folder}/{temporary_name(name)}" if folder else temporary_name(name)
    with fs.open_output_stream(temporary) as out:
        out.write(data)
    fs.move(temporary, path)


def publish(folder: Path, uri: str) -> None:
    """Copy a model folder's weights, log and model.json (last) to `uri`."""
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)
    for name in PUBLISHED:
        source = Path(folder) / name
        if source.exists():
            with fs.open_output_stream(f"{path}/{name}") as out:
                out.write(source.read_bytes())


def fetch(uri: str, folder: Path) -> Path:
    """Copy a published model to a local folder."""
    fs, path = filesystem(uri)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED:
        try:
            with fs.open_input_stream(f"{path}/{name}") as stream:
                (folder / name).write_bytes(stream.readall())
        except FileNotFoundError:
            if name != TRAIN_LOG:
                raise
    return folder


def local_or_fetch(uri: str, cache: Path) -> Path:
    """The model folder to read: `uri` itself when local, else a copy under `cache`."""
    fs, path = filesystem(uri)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        return Path(path)
    return fetch(uri, cache / safe_name(path))
