"""`lmops server start|stop|status`: a real Prefect server and MLflow server on 127.0.0.1, state under LMOPS_HOME."""

import json
import os
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except Exception:  # noqa: BLE001
        return 0


def test_server_start_is_idempotent_serves_both_uis_and_stop_stops_them(lmops_home, tmp_path):
    env = {"LMOPS_HOME": str(lmops_home)}
    env_without_api = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    ports = [str(_free_port()), str(_free_port())]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lmops.cli", "server", *args], cwd=tmp_path, env={**env_without_api, **env},
                              capture_output=True, text=True, timeout=300)

    r = cli("start", "--prefect-port", ports[0], "--mlflow-port", ports[1], "--json")
    try:
        assert r.returncode == 0, r.stderr[-3000:]
        st = json.loads(r.stdout.splitlines()[-1])
        assert st["prefect"]["running"] and st["mlflow"]["running"]
        assert st["prefect"]["url"] == f"http://127.0.0.1:{ports[0]}" and st["mlflow"]["url"] == f"http://127.0.0.1:{ports[1]}"
        assert _get(f"http://127.0.0.1:{ports[0]}/api/health") == 200 and _get(f"http://127.0.0.1:{ports[1]}/health") == 200
        text = cli("status").stdout
        assert f"Prefect UI  http://127.0.0.1:{ports[0]}" in text and "MLflow UI" in text
        # again: nothing new is started
        again = json.loads(cli("start", "--prefect-port", ports[0], "--mlflow-port", ports[1], "--json").stdout.splitlines()[-1])
        assert again["prefect"]["pid"] == st["prefect"]["pid"] and again["mlflow"]["pid"] == st["mlflow"]["pid"]
        # every lmops command on this machine now talks to it
        probe = subprocess.run([sys.executable, "-c", "import lmops, os; print(os.environ.get('PREFECT_API_URL'))"], env={**env_without_api, **env},
                               capture_output=True, text=True, cwd=tmp_path)
        assert probe.stdout.strip() == f"http://127.0.0.1:{ports[0]}/api"
    finally:
        stopped = cli("stop", "--json")
    assert stopped.returncode == 0
    assert not any(s["running"] for s in json.loads(stopped.stdout.splitlines()[-1]).values())
    assert _get(f"http://127.0.0.1:{ports[0]}/api/health") == 0 and _get(f"http://127.0.0.1:{ports[1]}/health") == 0
    assert cli("stop").returncode == 0  # stopping a stopped plane is fine
    probe = subprocess.run([sys.executable, "-c", "import lmops, os; print(os.environ.get('PREFECT_API_URL'))"], env={**env_without_api, **env},
                           capture_output=True, text=True, cwd=tmp_path)
    assert probe.stdout.strip() == "None"


def test_a_taken_port_is_a_user_error_naming_it(lmops_home, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("server", "start", "--prefect-port", str(port), "--mlflow-port", str(_free_port()), cwd=tmp_path,
                    env={"LMOPS_HOME": str(lmops_home)})
    assert r.returncode == 2 and f"port {port}" in r.stderr and "--prefect-port" in r.stderr
