"""Where local state lives and which environment defaults lmops sets.

Everything the embedded defaults write (Prefect home, MLflow DB and artifacts, the DVC local remote,
run directories) lives under one folder: ``$LMOPS_HOME``, else ``<project root>/.lmops``.
"""

from __future__ import annotations

import os
from pathlib import Path

# Offline and quiet: the product runs without a hub and phones nobody home. setdefault keeps a
# user's explicit choice (e.g. HF_HUB_OFFLINE=0 to fetch a real base model).
OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_UPDATE_DOWNLOAD_COUNTS": "0",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
    # transformers prints a load report table for every head swap (MLM → classifier); expected here.
    "TRANSFORMERS_VERBOSITY": "error",
    # The embedded (ephemeral) Prefect API migrates a fresh SQLite DB on first start; on 2 busy cores
    # that can exceed Prefect's 20 s default and fail the whole run.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # GX writes usage statistics unless told not to.
    "GX_ANALYTICS_ENABLED": "false",
}


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding ``params.yaml``, else cwd."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


def lmops_home() -> Path:
    home = os.environ.get("LMOPS_HOME")
    return Path(home).resolve() if home else project_root() / ".lmops"


def embedded_tracking_uri() -> str:
    """The MLflow registry lmops keeps for itself: SQLite under LMOPS_HOME."""
    return f"sqlite:///{lmops_home() / 'mlflow' / 'mlflow.db'}"


def mlflow_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set (a team's server), else the embedded registry."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    (lmops_home() / "mlflow").mkdir(parents=True, exist_ok=True)
    return embedded_tracking_uri()


def mlflow_artifact_root() -> str:
    root = lmops_home() / "mlflow" / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root.as_uri()


def dvc_remote_dir() -> Path:
    return lmops_home() / "dvc-remote"


def runs_dir() -> Path:
    return lmops_home() / "runs"


def new_run_dir(kind: str = "") -> Path:
    """A fresh, uniquely named folder under the runs directory (``<time>[-kind]-<id>``)."""
    import time
    import uuid

    name = "-".join(x for x in (time.strftime("%Y%m%d-%H%M%S"), kind, uuid.uuid4().hex[:6]) if x)
    run = runs_dir() / name
    run.mkdir(parents=True)
    return run


def control_plane_api_url() -> str | None:
    """The Prefect API of a running ``lmops server start`` (its record under LMOPS_HOME/server), else None."""
    import json

    rec = lmops_home() / "server" / "prefect.json"
    if not rec.is_file():
        return None
    try:
        data = json.loads(rec.read_text())
        os.kill(int(data["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return data.get("api_url")


def apply_defaults() -> None:
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # A local control plane is running: talk to it instead of starting a throw-away embedded API.
    if "PREFECT_API_URL" not in os.environ:
        url = control_plane_api_url()
        if url:
            os.environ["PREFECT_API_URL"] = url
    # Prefect reads PREFECT_HOME at import; an ephemeral local API keeps its SQLite DB there.
    os.environ.setdefault("PREFECT_HOME", str(lmops_home() / "prefect"))


def ensure_home() -> Path:
    """Create the state folders; Prefect's embedded API cannot create its SQLite DB in a missing folder."""
    home = lmops_home()
    for sub in ("prefect", "mlflow", "runs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    prefect_home = os.environ.get("PREFECT_HOME")
    if prefect_home:
        Path(prefect_home).expanduser().mkdir(parents=True, exist_ok=True)
    return home
