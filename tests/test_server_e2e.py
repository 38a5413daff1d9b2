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


@pytest.mark.slow  # the default run keeps the CLI on the embedded API (below) and test_flow's pipeline on a real Prefect API
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

    # the registered champion, by reference, scores the test split written out as a plain CSV exactly as the
    # flow's evaluation did
    import pandas as pd

    pd.read_parquet(project / "data" / "test.parquet")[["text", "label"]].to_csv(project / "heldout.csv", index=False)
    ev = run_cli("evaluate", "finance-sentiment@champion", "--data", "heldout.csv", "--json", cwd=project, env=env)
    assert ev.returncode == 0, ev.stderr[-3000:]
    scored = json.loads(ev.stdout.strip().splitlines()[-1])
    assert scored["macro_f1"] == pytest.approx(summary["metrics"]["macro_f1"], abs=1e-6) and scored["n"] == len(pd.read_csv(project / "heldout.csv"))
    assert scored["data_rows"]["rows_in"] == scored["data_rows"]["kept"] == scored["n"]


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


@pytest.mark.slow
def test_registry_commands_and_run_exit_codes_through_the_cli(prefect_server, project, lmops_home):
    """Manual champion changes through the CLI, each recorded; and `lmops run`'s exit codes: a champion whose
    artifacts are gone is 5, bad data 3, an unreachable DVC remote 4. (Slow tier: five flow runs. The
    default run keeps faster checks of each: tests/test_registry_version.py, test_stage_cli.py, test_audit.py.)"""
    env = {"PREFECT_API_URL": prefect_server, "LMOPS_HOME": str(lmops_home)}
    r = run_cli("run", "--json", "pretrain.max_steps=2", "finetune.epochs=1", cwd=project, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])

    # promote / rollback / compare through the CLI, each recorded
    from lmops.tasks import registry
    from tests.registry_helpers import fake_version

    fake_version(project.parent / "v2", False, None, name="finance-sentiment")  # a second version, gated out
    assert run_cli("promote", "finance-sentiment", "2", cwd=project, env=env).returncode == 2  # --reason is required
    pr = run_cli("promote", "finance-sentiment", "2", "--reason", "risk sign-off", "--json", cwd=project, env=env)
    assert pr.returncode == 0, pr.stderr[-2000:]
    assert json.loads(pr.stdout.strip().splitlines()[-1])["to_version"] == "2" and registry.show("finance-sentiment@champion")["version"] == 2
    rb = run_cli("rollback", "finance-sentiment", "--reason", "v2 misbehaves", "--json", cwd=project, env=env)
    assert rb.returncode == 0 and registry.show("finance-sentiment@champion")["version"] == 1
    assert [e["action"] for e in registry.history("finance-sentiment")] == ["promote (gate)", "promote (manual)", "rollback"]
    cmp = run_cli("compare", "finance-sentiment@1", "finance-sentiment@2", "--json", "--no-score", cwd=project, env=env)
    both = json.loads(cmp.stdout.strip().splitlines()[-1])
    assert both["metrics"]["macro_f1"][0] == pytest.approx(summary["metrics"]["macro_f1"]) and both["metrics"]["macro_f1"][1] == 0.5

    # exit codes of `lmops run`: a champion whose artifacts are gone is 5 (the registry is inconsistent), bad
    # data is 3 (nothing trained), an unreachable DVC remote is 4 (transient)
    weights = Path(registry.show("finance-sentiment@champion")["source"].removeprefix("file://")) / "model.safetensors"
    kept = weights.read_bytes()
    weights.unlink()
    broken = run_cli("run", "pretrain.max_steps=2", "finetune.epochs=1", cwd=project, env=env)
    assert broken.returncode == 5 and "finance-sentiment v1 is registered but its artifacts lack ['model.safetensors']" in broken.stderr, \
        broken.stderr[-2000:]
    weights.write_bytes(kept)
    bad = run_cli("run", "validate.min_labeled_rows=100000", cwd=project, env=env)
    assert bad.returncode == 3 and "data validation failed" in bad.stderr, bad.stderr[-2000:]
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "remote", "modify", "--local", "lmops-local", "url", "/proc/lmops-no-such-remote"],
                   cwd=project, check=True, capture_output=True)
    down = run_cli("run", "pretrain.max_steps=2", cwd=project, env=env)
    assert down.returncode == 4 and "dvc push" in down.stderr, down.stderr[-2000:]
