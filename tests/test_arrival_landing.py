"""Where data lands (a folder, an object-store prefix) and what a fresh clone knows of the previous version."""

import json
import os
import time
from pathlib import Path

import pytest

from lmops.config import load_params
from lmops.layout import RunLayout
from lmops.tasks import arrival
from tests.test_arrival import TWITTER_LABELS, _batch

pytestmark = pytest.mark.integration


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


@pytest.mark.slow  # the default run keeps the folder's settle/file-away check (the same _settled rule) above
def test_an_object_store_prefix_is_a_landing_folder_too(prefect_api, project, lmops_home, tmp_path, s3_server):
    """arrival.landing_url=s3://bucket/prefix on an S3-compatible server (moto's, over HTTP): settled objects are
    handed in and moved under accepted/ or rejected/, exactly as files in the landing folder are."""
    import boto3

    from lmops.flows.arrival import landing

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
