"""Data arrival: files handed in become validated batches of a new data version, announced by an event."""

import json
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
    # fewer new labeled rows than arrival.min_new_rows: versioned, but retraining waits (the rows count toward the next batch)
    from lmops.tasks.ingest import IngestSummary

    stricter = load_params(project / "params.yaml", overrides=[*TWITTER_LABELS, "arrival.min_new_rows=1000"])
    waiting = stages.retrain_due(stricter, project, IngestSummary.read(project / "data"))
    assert not waiting["retrain"] and "< arrival.min_new_rows=1000" in waiting["reason"] and waiting["new_rows"] == first["new_rows"]
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


def test_lmops_data_add_refuses_a_missing_file_naming_it(project, lmops_home):
    """The default run's quick check of the command line (the slow test below runs it through every outcome)."""
    from tests.conftest import run_cli

    r = run_cli("data", "add", "missing.csv", cwd=project, env={"LMOPS_HOME": str(lmops_home)})
    assert r.returncode == 2 and "missing.csv" in r.stderr


@pytest.mark.slow
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
