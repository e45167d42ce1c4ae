"""Finding things in an MLflow store.

Experiments, final runs, their `detector` models, and local copies of a detector (`models:/...`,
`runs:/...`) for code that wants a plain folder (`i3ad detect`).

`resolve_model_uri` is registered in pyproject.toml as the `i3ad.model_resolvers` entry point for the
`models` and `runs` schemes: `i3ad detect --model models:/...` finds it there without importing `tracking`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Experiment, Run, ViewType
from mlflow.models import Model
from mlflow.store.tracking import SEARCH_MAX_RESULTS_DEFAULT
from mlflow.utils import get_results_from_paginated_fn

from i3ad.errors import ConfigError
from tracking.relocate import moved_message

DETECTOR_NAME = "detector"
ARTIFACT_KEY = "detector"  # the artifact folder inside the pyfunc (see tracking/detector_model.py)
DEFAULT_DB = Path("runs") / "sweep" / "mlflow.db"


class TrackingError(Exception):
    """An experiment, category, run, metric or model asked for is not in the store."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else the sweep's default SQLite file (absolute)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(Path.cwd() / DEFAULT_DB).resolve()}"


def client_for(uri: str | None = None) -> MlflowClient:
    """A client on the tracking (and registry) store; also made the process default for fluent calls."""
    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.exists():
            raise TrackingError(f"no MLflow store at {db}; run the sweep first or pass --tracking-uri")
        moved = moved_message(uri)
        if moved:
            raise TrackingError(moved)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, registry_uri=uri)


def get_experiment(client: MlflowClient, name: str) -> Experiment:
    """The experiment called `name`, or a TrackingError listing the ones that exist."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        names = sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY))
        raise TrackingError(
            f"experiment {name!r} not found at {client.tracking_uri}; experiments there: {', '.join(names) or 'none'}"
        )
    return experiment


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def final_runs(client: MlflowClient, experiment_id: str, category: str | None = None) -> list[Run]:
    """FINISHED `phase=final` runs of an experiment (of one category when given), newest first."""
    query = "tags.phase = 'final' and attributes.status = 'FINISHED'"
    if category is not None:
        query += f" and tags.category = {_quote(category)}"
    # mlflow.search_runs would page on the process-wide tracking URI, not necessarily this client's.
    return get_results_from_paginated_fn(
        lambda count, token: client.search_runs(
            [experiment_id],
            query,
            ViewType.ACTIVE_ONLY,
            max_results=count,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        ),
        SEARCH_MAX_RESULTS_DEFAULT,
    )


def detector_uri(client: MlflowClient, run: Run, name: str = DETECTOR_NAME) -> str:
    """`models:/<model_id>` of the model `name` logged by `run`."""
    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = {_quote(run.info.run_id)} AND name = {_quote(name)}",
    )
    if not found:
        raise TrackingError(f"run {run.info.run_id} ({run.info.run_name}) has no logged model {name!r}")
    return found[0].model_uri


def _model_uri(uri: str) -> str:
    """`runs:/<run_id>/<name>` as `models:/<model_id>` (MLflow 3 keeps logged models outside run artifacts)."""
    if not uri.startswith("runs:/"):
        return uri
    run_id, _, name = uri.removeprefix("runs:/").partition("/")
    client = MlflowClient()
    return detector_uri(client, client.get_run(run_id), name or DETECTOR_NAME)


def download_detector(uri: str, dst: Path | None = None, tracking_uri: str | None = None) -> Path:
    """Download the detector model at `uri` and return its local detector folder.

    `uri` is e.g. `models:/i3ad-carpet@champion`, `models:/m-...` or `runs:/<run_id>/detector`; the folder
    holds weights, model.json and detector.json. Without `dst` the copy goes to a temporary folder deleted
    at exit.
    """
    client_for(tracking_uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file is noise here
    if dst is None:  # a throwaway copy: removed when the process exits
        dst = Path(tempfile.mkdtemp(prefix="i3ad-model-"))
        atexit.register(shutil.rmtree, dst, ignore_errors=True)
    try:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=_model_uri(uri), dst_path=str(dst)))
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"cannot resolve {uri} at {resolve_tracking_uri(tracking_uri)}: {exc.message}") from exc
    try:
        artifacts = Model.load(str(root)).flavors["python_function"]["artifacts"]
        relative = str(artifacts[ARTIFACT_KEY]["path"])
    except (KeyError, OSError, TypeError) as exc:
        raise TrackingError(f"{uri} is not an i3ad detector (no `{ARTIFACT_KEY}` artifact in its MLmodel)") from exc
    return inside(root, relative, f"{uri}: the MLmodel's `{ARTIFACT_KEY}` artifact path")


def inside(root: Path, relative: str, what: str) -> Path:
    """`root / relative`, refused unless `relative` is a plain relative path that stays inside `root`.

    An MLmodel is data from the artifact store: an absolute path or `..` in it would make the loader read
    (and later run code from) a folder outside the downloaded model.
    """
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts or not relative.strip():
        raise TrackingError(f"{what} {relative!r} must be a relative path inside the model (no `..`, not absolute)")
    folder = (Path(root) / path).resolve()
    if not folder.is_relative_to(Path(root).resolve()):
        raise TrackingError(f"{what} {relative!r} leads outside the downloaded model (a link?)")
    return folder


def resolve_model_uri(uri: str, tracking_uri: str | None = None) -> Path:
    """`download_detector` as an `i3ad.model_resolvers` plug-in: a store error becomes the CLI's ConfigError."""
    try:
        return download_detector(uri, tracking_uri=tracking_uri)
    except TrackingError as exc:
        raise ConfigError(str(exc)) from exc
