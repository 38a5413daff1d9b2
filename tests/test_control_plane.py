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


def _serve_and_check_the_schedule(project, env, api_url):
    """`lmops serve --params LAYER` against the running server: the deployment carries the schedule section's cron
    and time zone and the layer, and the server has its next run scheduled."""
    import time

    import yaml
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tree = yaml.safe_load((project / "params.yaml").read_text())
    tree["schedule"] = {"cron": "30 3 * * 1-5", "timezone": "Europe/London"}
    (project / "params.yaml").write_text(yaml.safe_dump(tree))
    (project / "fast.yaml").write_text("finetune: {epochs: 1}\n")
    serve = subprocess.Popen([sys.executable, "-m", "lmops.cli", "serve", "--params", "fast.yaml", "pretrain.max_steps=3"], cwd=project,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            from prefect import get_client
            from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

            deadline, dep, runs = time.time() + 120, None, []
            with get_client(sync_client=True) as client:
                while time.time() < deadline and not runs:
                    time.sleep(2)
                    try:
                        dep = client.read_deployment_by_name("lmops-scheduled/nightly")
                    except Exception:  # noqa: BLE001 - not served yet
                        continue
                    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
        assert dep is not None, serve.stdout.read() if serve.poll() is not None else "no deployment"
        sched = dep.schedules[0].schedule
        assert (sched.cron, sched.timezone) == ("30 3 * * 1-5", "Europe/London")
        assert dep.parameters["layers"] == ["fast.yaml"] and dep.parameters["overrides"] == ["pretrain.max_steps=3"]
        assert runs and runs[0].state.type.value == "SCHEDULED" and runs[0].expected_start_time.hour in (2, 3)  # 03:30 London = 02:30/03:30 UTC
    finally:
        serve.terminate()
        serve.wait(timeout=60)


def test_serve_without_a_server_is_a_user_error_not_a_silent_no_op(project):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    r = subprocess.run([sys.executable, "-m", "lmops.cli", "serve"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "lmops server start" in r.stderr


@pytest.mark.slow
def test_server_start_is_idempotent_serves_both_uis_and_stop_stops_them(lmops_home, project, tmp_path):
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
        _serve_and_check_the_schedule(project, {**env_without_api, **env}, f"http://127.0.0.1:{ports[0]}/api")
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


def test_commands_use_a_running_control_plane_and_ignore_a_dead_one(lmops_home, tmp_path):
    """The default run's quick check of the pick-up (the slow test above starts the real servers): a record
    whose process lives sets PREFECT_API_URL for every lmops command; a stale one (dead pid) does not, and an
    explicit PREFECT_API_URL always wins."""
    server = lmops_home / "server"
    server.mkdir(parents=True)
    probe = "import lmops, os; print(os.environ.get('PREFECT_API_URL'))"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"LMOPS_HOME": str(lmops_home)}
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (server / "prefect.json").write_text(json.dumps({"pid": sleeper.pid, "api_url": "http://127.0.0.1:4999/api"}))
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path).stdout.strip()
        assert out == "http://127.0.0.1:4999/api"
        out = subprocess.run([sys.executable, "-c", probe], env={**env, "PREFECT_API_URL": "http://elsewhere/api"}, capture_output=True,
                             text=True, cwd=tmp_path).stdout.strip()
        assert out == "http://elsewhere/api"
    finally:
        sleeper.kill()
        sleeper.wait()
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert out == "None"


def test_the_shipped_deployments_name_real_flows_and_pass_prefects_trigger_validation():
    """infra/prefect.yaml: every entrypoint is a flow of this repository, and every trigger passes Prefect's own models
    (the same ones `prefect deploy` builds automations from)."""
    import importlib
    from pathlib import Path

    import yaml
    from prefect import Flow
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    repo = Path(__file__).resolve().parent.parent
    spec = yaml.safe_load((repo / "infra" / "prefect.yaml").read_text())
    kinds = set()
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        assert (repo / path).is_file(), dep["name"]
        assert isinstance(getattr(importlib.import_module("lmops." + path[:-3].replace("/", ".")), func), Flow), dep["name"]
        for trigger in dep.get("triggers", []):
            parsed = TypeAdapter(DeploymentTriggerTypes).validate_python(trigger)
            kinds.add((dep["name"], tuple(sorted(parsed.expect)), parsed.parameters.get("data_version")))
    assert kinds == {("retrain-on-new-data", ("lmops.data.version.created",), "{{ event.payload.md5 }}"),
                     ("retrain-on-drift", ("lmops.monitor.drift",), None)}
