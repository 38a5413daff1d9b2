"""A real control plane for end-to-end tests: `lmops server start` (Prefect server + MLflow UI), then `lmops serve`
in the project, torn down afterwards. Importable from the test modules (no fixtures here)."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from tests.test_control_plane import _free_port


@dataclass
class Served:
    api: str
    env: dict[str, str]  # the environment lmops commands need to use this control plane
    client: Any  # a sync Prefect client on it
    log: Path  # `lmops serve`'s output

    def runs_of(self, deployment: str) -> list:
        """Flow runs of ``deployment`` ("flow/deployment"); [] while it is not served yet."""
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        try:
            dep = self.client.read_deployment_by_name(deployment)
        except Exception:  # noqa: BLE001 - not served yet
            return []
        return self.client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))


@contextmanager
def control_plane(project: Path, lmops_home: Path, tmp_path: Path, before_serve: Callable[[dict], None] | None = None) -> Iterator[Served]:
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, "LMOPS_HOME": str(lmops_home)}
    ports = [str(_free_port()), str(_free_port())]
    cli = [sys.executable, "-m", "lmops.cli"]
    started = subprocess.run([*cli, "server", "start", "--prefect-port", ports[0], "--mlflow-port", ports[1]], cwd=project, env=env,
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    api = f"http://127.0.0.1:{ports[0]}/api"
    served_env = {**env, "PREFECT_API_URL": api}
    serve = None
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")
    try:
        if before_serve:
            before_serve(served_env)
        serve = subprocess.Popen([*cli, "serve"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            yield Served(api, served_env, client, log_path)
    finally:
        if serve is not None:
            serve.terminate()
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()
        log.close()
        subprocess.run([*cli, "server", "stop"], cwd=project, env=env, capture_output=True, timeout=120)
