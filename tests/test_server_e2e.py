"""`lmops run` as a user runs it, against a real `prefect server` on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    port = _free_port()
    home = tmp_path_factory.mktemp("prefect-server")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    prefect = Path(sys.executable).parent / "prefect"
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("prefect server did not become healthy within 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_lmops_run_cli_against_a_real_prefect_server(prefect_server, project, lmops_home):
    env = {"PREFECT_API_URL": prefect_server, "LMOPS_HOME": str(lmops_home)}
    r = run_cli("run", "--json", "pretrain.max_steps=6", "finetune.epochs=1", cwd=project, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["model"]["name"] == "finance-sentiment" and summary["model"]["version"] == 1
    # the flow run is recorded on that server
    with urllib.request.urlopen(urllib.request.Request(f"{prefect_server}/flow_runs/{summary['flow_run_id']}")) as resp:
        assert json.loads(resp.read())["state_type"] == "COMPLETED"
    shown = run_cli("models", "show", "finance-sentiment@1", "--json", cwd=project, env=env)
    info = json.loads(shown.stdout.strip().splitlines()[-1])
    for key in ("name", "version", "aliases", "metrics", "data_version", "params_hash", "git_commit", "flow_run_id"):
        assert key in info and info[key] not in (None, ""), key
    assert info["flow_run_id"] == summary["flow_run_id"]


def test_lmops_run_on_a_fresh_home_with_the_embedded_prefect_api(project, tmp_path):
    """What `make run` does on a new machine: no server, no state folder yet."""
    home = tmp_path / "fresh" / ".lmops"
    env = {k: v for k, v in os.environ.items() if k not in {"PREFECT_HOME", "PREFECT_API_URL"}}
    env["LMOPS_HOME"] = str(home)
    r = subprocess.run([sys.executable, "-m", "lmops.cli", "run", "--json", "pretrain.max_steps=4", "finetune.epochs=1"],
                       cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["promoted"] and Path(summary["run_dir"]).is_relative_to(home)
    assert (home / "prefect" / "prefect.db").exists() and (home / "mlflow" / "mlflow.db").exists()
