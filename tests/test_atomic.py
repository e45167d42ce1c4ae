"""Atomic writes: local files (i3ad.atomic) and files in Tune storage (studies.storage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from i3ad.atomic import atomic_write, atomic_write_json, atomic_write_text, temporary_name
from studies.storage import filesystem, write_atomically


def test_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "model.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in target.parent.iterdir()] == ["model.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "weights.safetensors"
    target.write_text("old")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]


def test_temporary_names_cannot_pass_for_data(tmp_path: Path) -> None:
    names = {temporary_name("000.png") for _ in range(3)}
    assert len(names) == 3
    for name in names:  # hidden (folder readers skip dot files) and never a data suffix
        assert name.startswith(".000.png.") and name.endswith(".tmp")
    seen: list[Path] = []
    atomic_write(tmp_path / "x.json", lambda tmp: (seen.append(tmp), tmp.write_text("{}")))
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".x.json.") and seen[0].suffix == ".tmp"


def test_permissions_are_those_of_a_plain_write(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode == plain.stat().st_mode


def test_storage_write_goes_through_a_hidden_temporary(tmp_path: Path) -> None:
    fs, folder = filesystem(str(tmp_path / "finished"))
    fs.create_dir(folder, recursive=True)
    moves: list[str] = []

    class Recording:  # pyarrow's filesystems are immutable types: wrap instead of patching
        def open_output_stream(self, path: str):
            return fs.open_output_stream(path)

        def move(self, src: str, dest: str) -> None:
            moves.append(src)
            fs.move(src, dest)

    write_atomically(Recording(), f"{folder}/t1.json", json.dumps({"val/auroc": 0.5}).encode())
    assert json.loads((tmp_path / "finished" / "t1.json").read_text()) == {"val/auroc": 0.5}
    (source,) = moves
    assert Path(source).parent == tmp_path / "finished"
    assert Path(source).name.startswith(".t1.json.") and source.endswith(".tmp")
    assert [p.name for p in (tmp_path / "finished").iterdir()] == ["t1.json"]
