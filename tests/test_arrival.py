"""Data arrival: files handed in become validated batches of a new data version, announced by an event."""

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from lmops.config import load_params
from lmops.layout import RunLayout, Snapshot
from lmops.tasks import arrival
from lmops.tasks.version import read_data_version

FIXTURES = Path(__file__).parent / "fixtures"
TWITTER_LABELS = ["arrival.label_map={'0': negative, '1': positive, '2': neutral}"]

pytestmark = pytest.mark.integration


def _batch(tmp_path: Path, name: str, rows: slice) -> Path:
    frame = pd.read_csv(FIXTURES / "twitter_sample.csv").iloc[rows]
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _splits(root: Path) -> dict[str, set[str]]:
    return {s: set(pd.read_parquet(root / "data" / f"{s}.parquet")["id"]) for s in ("train", "validation", "test")}


def test_a_new_file_becomes_a_validated_batch_of_a_new_version_and_the_same_bytes_add_nothing(prefect_api, project, lmops_home, tmp_path):
    from lmops.flows.arrival import add_data
    from lmops.tasks import stages

    p = load_params(project / "params.yaml", overrides=TWITTER_LABELS)
    # the first version: the sources in params and the batch
    first = add_data(params=p.to_dict(), project_root=str(project), files=[(str(_batch(tmp_path, "a.csv", slice(0, 60))), "labeled")])
    assert first["status"] == "added" and first["md5"] == read_data_version(project / "data.dvc")
    (bid, counts), = first["batches"].items()
    assert counts["rows_in"] == 60 == counts["kept"] + counts["quarantined"] + counts["duplicates"] and counts["kept"] > 50
    assert first["retrain"] and "no trained version" in first["reason"]
    stored = json.loads((project / "data" / "batches" / bid / "batch.json").read_text())
    assert stored["file"] == "a.csv" and stored["role"] == "labeled" and stored["format"] == "csv"
    before = _splits(project)
    assert any(i.startswith(f"batch-{bid}:") for i in before["train"]) and any(i.startswith(f"batch-{bid}:") for i in before["test"])

    # the same bytes again (another name): nothing added, no new version, no retraining
    again = add_data(params=p.to_dict(), project_root=str(project), files=[(str(_batch(tmp_path, "copy.csv", slice(0, 60))), "labeled")])
    assert again["status"] == "known" and not again["retrain"] and again["known"] == [bid]
    assert read_data_version(project / "data.dvc") == first["md5"]

    # a second batch: the earlier rows keep their splits (each batch is split among its own rows)
    second = add_data(params=p.to_dict(), project_root=str(project), files=[(str(_batch(tmp_path, "b.csv", slice(60, 150))), "labeled")])
    assert second["status"] == "added" and second["md5"] != first["md5"]
    after = _splits(project)
    assert all(before[s] <= after[s] for s in before), "no earlier row moved between splits"
    assert sorted(b.id for b in arrival.batches(Snapshot(project / "data"))) == sorted([bid, *second["batches"]])

    # a scheduled run re-ingests the sources in params *and* every batch: nothing handed in is dropped
    run = RunLayout(lmops_home / "runs" / "check")
    summary = stages.ingest(p, run, carry_from=Snapshot(project / "data"))
    assert {f"batch-{bid}", *(f"batch-{b}" for b in second["batches"])} <= set(summary.sources)
    assert _splits_of(run) == after


def _splits_of(run: RunLayout) -> dict[str, set[str]]:
    return {s: set(pd.read_parquet(run.data.split(s))["id"]) for s in ("train", "validation", "test")}


def test_a_bad_batch_is_rejected_with_a_quarantine_report_an_alert_and_no_new_version(prefect_api, project, lmops_home, tmp_path, webhook):
    from lmops.errors import DataError
    from lmops.flows.arrival import add_data

    url, received = webhook
    p = load_params(project / "params.yaml", overrides=[*TWITTER_LABELS, f"notify.webhook_url={url}"])
    good = add_data(params=p.to_dict(), project_root=str(project), files=[(str(_batch(tmp_path, "a.csv", slice(0, 40))), "labeled")])
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\n" + "".join(f"headline number {i} about quarterly results,maybe\n" for i in range(30)))
    with pytest.raises(DataError, match="quarantined"):
        add_data(params=p.to_dict(), project_root=str(project), files=[(str(bad), "labeled")])
    assert read_data_version(project / "data.dvc") == good["md5"], "the current data version is unchanged"
    report = max((lmops_home / "runs").glob("*-arrival-*"), key=lambda d: d.stat().st_mtime)
    result = json.loads((report / "arrival.json").read_text())
    (counts,) = result["batches"].values()
    assert result["status"] == "rejected" and counts["rows_in"] == 30 == counts["quarantined"]
    quarantine = pd.read_parquet(result["quarantine"])
    assert (quarantine["reason"].str.contains("maybe")).sum() == 30, "each row carries its reason"
    assert "Rejected" in (report / "arrival.md").read_text()
    assert [m["event"] for m in received] == ["lmops.data.rejected"] and received[0]["status"] == "rejected"


def test_retraining_waits_for_enough_new_rows(prefect_api, project, lmops_home, tmp_path):
    from lmops.flows.arrival import add_data

    p = load_params(project / "params.yaml", overrides=[*TWITTER_LABELS, "arrival.min_new_rows=1000"])
    out = add_data(params=p.to_dict(), project_root=str(project), files=[(str(_batch(tmp_path, "a.csv", slice(0, 40))), "labeled")])
    assert out["status"] == "added" and not out["retrain"] and "< arrival.min_new_rows=1000" in out["reason"]


def test_the_landing_folder_takes_only_settled_files_and_files_them_away(tmp_path):
    landing = tmp_path / "landing"
    (landing / "labeled").mkdir(parents=True)
    (landing / "unlabeled").mkdir()
    old, fresh = landing / "labeled" / "old.csv", landing / "unlabeled" / "fresh.txt"
    old.write_text("text,label\n")
    fresh.write_text("still being copied")
    (landing / "labeled" / "big.csv.part").write_text("partial")
    (landing / "labeled" / ".hidden.csv").write_text("x")
    past = time.time() - 60
    os.utime(old, (past, past))
    assert arrival.landed(landing, settle_s=10) == [(old, "labeled")]
    moved = arrival.file_away([old], landing, "rejected", "no rows")
    assert not old.exists() and Path(moved[0]).read_text() == "text,label\n"
    assert Path(moved[0] + ".reason.txt").read_text() == "no rows\n"
    with pytest.raises(Exception, match="cannot tell how to read"):
        arrival.format_of(Path("x.xlsx"))


def test_lmops_data_add_on_the_command_line(project, lmops_home, tmp_path):
    from tests.conftest import run_cli

    env = {"LMOPS_HOME": str(lmops_home)}
    good = run_cli("data", "add", str(_batch(tmp_path, "a.csv", slice(0, 50))), *TWITTER_LABELS, "--json", cwd=project, env=env)
    assert good.returncode == 0, good.stderr[-3000:]
    out = json.loads(good.stdout.splitlines()[-1])
    assert out["status"] == "added" and out["md5"] == read_data_version(project / "data.dvc") and out["rows_in"] == 50
    text = run_cli("data", "add", str(_batch(tmp_path, "same.csv", slice(0, 50))), *TWITTER_LABELS, cwd=project, env=env)
    assert text.returncode == 0 and "nothing added" in text.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\n" + "".join(f"headline number {i} about quarterly results,maybe\n" for i in range(30)))
    rejected = run_cli("data", "add", str(bad), *TWITTER_LABELS, cwd=project, env=env)
    assert rejected.returncode == 3 and "quarantined" in rejected.stderr, rejected.stderr[-2000:]
    assert run_cli("data", "add", "missing.csv", cwd=project, env=env).returncode == 2


def test_an_object_store_prefix_is_a_landing_folder_too(prefect_api, project, lmops_home, tmp_path, monkeypatch):
    """arrival.landing_url=s3://bucket/prefix on an S3-compatible server (moto's, over HTTP): settled objects are
    handed in and moved under accepted/ or rejected/, exactly as files in the landing folder are."""
    import subprocess
    import sys
    import urllib.request

    import boto3

    from lmops.flows.arrival import landing
    from tests.test_control_plane import _free_port

    port = _free_port()
    creds = {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "moto server did not start"
                time.sleep(0.3)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="drop")
        s3.upload_file(str(_batch(tmp_path, "a.csv", slice(0, 40))), "drop", "in/labeled/a.csv")
        s3.put_object(Bucket="drop", Key="in/labeled/b.csv.part", Body=b"still uploading")
        overrides = [*TWITTER_LABELS, "arrival.landing_url=s3://drop/in", "arrival.settle_s=0"]
        out = landing(params_file="params.yaml", overrides=overrides, project_root=str(project))
        assert out["status"] == "added" and [c["file"] for c in out["batches"].values()] == ["a.csv"]
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="drop")["Contents"])
        assert keys[0].startswith("in/accepted/") and keys[0].endswith("/a.csv") and keys[1:] == ["in/labeled/b.csv.part"]
        assert landing(params_file="params.yaml", overrides=overrides, project_root=str(project)) == {"status": "nothing landed"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_fresh_clone_checks_label_drift_against_the_previous_version_from_the_remote(prefect_api, project, lmops_home, tmp_path):
    """A worker that runs each flow in a fresh clone has data.dvc but no data/: the previous version's label counts
    are read from the DVC remote, so the drift check still has something to compare with."""
    import subprocess
    import sys

    from lmops.flows.arrival import add_data
    from lmops.tasks import stages
    from lmops.tasks.validate import previous_label_counts

    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=project, check=True)
    subprocess.run([*dvc, "remote", "add", "-d", "storage", str(tmp_path / "shared-remote")], cwd=project, check=True)
    p = load_params(project / "params.yaml", overrides=TWITTER_LABELS)
    add_data(params=p.to_dict(), project_root=str(project), files=[(str(_batch(tmp_path, "a.csv", slice(0, 40))), "labeled")])
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "add", "data.dvc", ".dvc/config", ".dvcignore", ".gitignore"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "data"], cwd=project, check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert (clone / "data.dvc").is_file() and not (clone / "data").exists()

    previous = stages.previous_version(clone, RunLayout(tmp_path / "run"))
    counts, why = previous_label_counts(previous.dir, p.validate_.labels, p.finetune.kind)
    assert why is None and counts == json.loads((project / "data" / "summary.json").read_text())["label_counts"]
