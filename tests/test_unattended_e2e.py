"""The unattended loop end to end on a real `prefect server` process: files dropped in the landing folder →
validated → a new data version → the trigger runs retraining on exactly that version → registered."""

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.served import control_plane

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _drop(project: Path, name: str, rows: slice, role: str = "labeled") -> Path:
    """Write the file as a copy in progress would (``.part``), then rename it in place, as a careful uploader does."""
    folder = project / "landing" / role
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{name}.part"
    pd.read_csv(FIXTURES / "twitter_sample.csv").iloc[rows].to_csv(tmp, index=False)
    return tmp.rename(folder / name)


def _wait(what: str, check, timeout: float = 300, every: float = 2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = check()
        if out:
            return out
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_landing_folder_to_registered_model_through_a_real_server(lmops_home, project, tmp_path, webhook):
    from lmops.tasks import registry
    from lmops.tasks.version import read_data_version

    url, received = webhook
    tree = yaml.safe_load((project / "params.yaml").read_text())
    tree["arrival"] = {"settle_s": 1, "poll_s": 2, "label_map": {"0": "negative", "1": "positive", "2": "neutral"}}
    tree["notify"] = {"webhook_url": url, "events": ["promoted", "not_promoted", "data_rejected"]}
    tree["schedule"] = {"cron": "0 2 * * *", "timezone": "UTC"}
    (project / "params.yaml").write_text(yaml.safe_dump(tree))

    with control_plane(project, lmops_home, tmp_path) as cp:
        client, log = cp.client, cp.log

        def runs_of(name):
            return cp.runs_of(name) or None

        def trainings():
            return [r for r in runs_of("lmops-scheduled/nightly-on-new-data") or []]

        # served: the nightly schedule has its next run scheduled
        nightly = _wait("the nightly deployment's scheduled run", lambda: runs_of("lmops-scheduled/nightly"), timeout=180)
        assert nightly[0].state.type.value == "SCHEDULED" and nightly[0].expected_start_time.hour == 2

        # 1. a labeled file lands → a new data version → exactly one retraining on exactly that version
        _drop(project, "a.csv", slice(0, 80))
        done = _wait("the first retraining", lambda: [r for r in trainings() if r.state.is_final()] or None, timeout=600)
        assert len(trainings()) == 1 and done[0].state.type.value == "COMPLETED", log.read_text()[-4000:]
        md5 = read_data_version(project / "data.dvc")
        assert done[0].parameters["data_version"] == md5
        v1 = registry.show("finance-sentiment@1")
        assert v1["data_version"] == md5 and v1["tags"]["root_flow_run_id"] == str(done[0].id)
        assert v1["deployment_id"] == str(client.read_deployment_by_name("lmops-scheduled/nightly-on-new-data").id)
        arrivals = sorted(lmops_home.glob("runs/*-arrival-*/arrival.json"))
        first = json.loads(arrivals[-1].read_text())
        assert first["status"] == "added" and first["md5"] == md5
        latency = (done[0].start_time.timestamp() - arrivals[-1].stat().st_mtime)
        print(f"\nevent → retraining flow run start: {latency:.1f} s")
        assert (project / "landing" / "accepted").is_dir() and not any((project / "landing" / "labeled").iterdir())

        # 2. the same bytes again, under another name: taken, nothing added, no training
        shutil.copy(next((project / "landing" / "accepted").rglob("a.csv")), project / "landing" / "labeled" / "a-again.csv")
        _wait("the copy to be filed away", lambda: not any((project / "landing" / "labeled").iterdir()))
        time.sleep(8)
        assert len(trainings()) == 1 and read_data_version(project / "data.dvc") == md5

        # 3. a malformed file: rejected with its reason, an alert, no training
        bad = project / "landing" / "labeled" / "bad.csv"
        bad.write_text("text,label\n" + "".join(f"headline number {i} about quarterly results,maybe\n" for i in range(30)))
        reason = _wait("the rejection", lambda: list((project / "landing" / "rejected").rglob("bad.csv.reason.txt")))
        assert "quarantined" in reason[0].read_text()
        _wait("the alert", lambda: [m for m in received if m["event"] == "lmops.data.rejected"], timeout=30)
        assert len(trainings()) == 1 and read_data_version(project / "data.dvc") == md5

        # 4. two arrivals in quick succession: never two trainings at once, and the newest data is trained on
        _drop(project, "b.csv", slice(80, 115))
        _wait("b.csv to be taken", lambda: not any((project / "landing" / "labeled").iterdir()), timeout=120)
        _drop(project, "c.csv", slice(115, 150))
        final = _wait("both retrainings", lambda: (len(trainings()) == 3 and all(r.state.is_final() for r in trainings())) and trainings(),
                      timeout=900)
        assert all(r.state.type.value == "COMPLETED" for r in final), log.read_text()[-4000:]
        # the flow runs may overlap (one waits for the other's lock); the trainings must not
        ids = {str(r.id) for r in final}
        summaries = [s for s in (json.loads(f.read_text()) for f in lmops_home.glob("runs/*/run.json")) if s.get("root_flow_run_id") in ids]
        spans = sorted((s["training_lock"]["held_from"], s["training_lock"]["held_to"]) for s in summaries if "training_lock" in s)
        assert len(spans) >= 2 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), f"trainings overlapped: {spans}"
        newest = registry.get_version("finance-sentiment")
        assert newest.tags["data_version"] == read_data_version(project / "data.dvc")
