"""A moved embedded store: find artifact locations that point where the store used to be, and rewrite them.

MLflow records absolute artifact locations (`file:///old/runs/sweep/mlartifacts/quick/...`) in its database.
Copy `runs/` elsewhere and the copied `mlflow.db` still points at the old folder: the UI shows runs without
artifacts and loading a model fails, with nothing saying why. `moved_locations` detects it (an experiment's
recorded folder is gone, the same folder exists next to the database), `moved_message` says what to run
(`tracking.store.Store` and `tracking.registry.client_for` raise it), and
`python -m tracking.relocate sqlite:///<new>/mlflow.db` rewrites the recorded locations (experiments, runs,
logged models, model versions) to the folder next to the database.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

# table -> columns holding artifact locations (those a store of this MLflow version has are rewritten)
LOCATION_COLUMNS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "logged_models": ("artifact_location",),
    "model_versions": ("source", "storage_location"),
}


@dataclass(frozen=True)
class Moved:
    """One experiment whose artifact folder moved: its name, the recorded prefix and where it is now."""

    experiment: str
    old: str  # file URI recorded in the database
    new: str  # file URI of the same folder next to the database


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


def _file_path(uri: str) -> Path | None:
    if not uri or not uri.startswith("file:"):
        return None
    return Path(unquote(urlparse(uri).path))


def _found_near(old: Path, root: Path) -> Path | None:
    """The folder under `root` that ends like `old` does, the longest such ending first."""
    parts = old.parts[1:]
    for start in range(len(parts)):
        candidate = root.joinpath(*parts[start:])
        if candidate.is_dir():
            return candidate
    return None


def moved_locations(uri: str) -> list[Moved]:
    """Experiments of a SQLite store whose artifact folder is missing but sits next to the database."""
    db = _sqlite_path(uri)
    if db is None or not db.is_file():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        try:
            rows = connection.execute("select name, artifact_location from experiments").fetchall()
        except sqlite3.OperationalError:  # not (yet) an MLflow database
            return []
    moved = []
    for name, location in rows:
        old = _file_path(location)
        if old is None or old.exists():
            continue
        new = _found_near(old, db.parent)
        if new is not None:
            moved.append(Moved(name, location, new.resolve().as_uri()))
    return moved


def moved_message(uri: str) -> str | None:
    """What to run when a SQLite store was moved away from its recorded artifact folders, else None."""
    moved = moved_locations(uri)
    if not moved:
        return None
    first = moved[0]
    return (
        f"the MLflow store {uri} was moved: experiment {first.experiment!r} records its artifacts at "
        f"{first.old}, which does not exist; the same folder is at {first.new}"
        + (f" ({len(moved)} experiments)" if len(moved) > 1 else "")
        + f". Point the store at it with `python -m tracking.relocate {uri}`, then open it again"
    )


def relocate(uri: str) -> int:
    """Rewrite every recorded artifact location of a moved SQLite store; returns how many values changed."""
    moved = moved_locations(uri)
    db = _sqlite_path(uri)
    changed = 0
    if not moved or db is None:
        return 0
    with sqlite3.connect(str(db)) as connection:
        tables = {row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")}
        for entry in moved:
            for table, columns in LOCATION_COLUMNS.items():
                if table not in tables:
                    continue
                present = {row[1] for row in connection.execute(f"pragma table_info({table})")}
                for column in columns:
                    if column not in present:
                        continue
                    # the prefix only: `old` followed by the end or a "/" (never `old` + "2/...")
                    cursor = connection.execute(
                        f"update {table} set {column} = ? || substr({column}, ?) "  # noqa: S608 - fixed names
                        f"where {column} = ? or {column} like ? escape '\\'",
                        (entry.new, len(entry.old) + 1, entry.old, _like_prefix(entry.old + "/")),
                    )
                    changed += cursor.rowcount
    return changed


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tracking.relocate sqlite:///<path>/mlflow.db`: point a moved store at its artifacts."""
    parser = argparse.ArgumentParser(prog="python -m tracking.relocate", description=main.__doc__)
    parser.add_argument("uri", help="the moved store, sqlite:///<new folder>/mlflow.db")
    args = parser.parse_args(argv)
    moved = moved_locations(args.uri)
    if not moved:
        print(f"{args.uri}: every experiment's artifact folder is where the store says; nothing to do")
        return 0
    changed = relocate(args.uri)
    for entry in moved:
        print(f"{entry.experiment}: {entry.old} -> {entry.new}")
    print(f"rewrote {changed} recorded artifact location(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
