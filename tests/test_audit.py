"""Registry safety and the audit trail: manual actions, rollback, concurrency, verification, restore."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from lmops.config import load_params
from lmops.errors import UserError
from lmops.tasks import registry
from tests.conftest import REPO, run_cli
from tests.registry_helpers import fake_version as _fake_version
from tests.registry_helpers import raced, start_race


def test_manual_promote_and_rollback_are_recorded(lmops_home, tmp_path):
    _fake_version(tmp_path / "1", True, None)
    _fake_version(tmp_path / "2", True, "1")
    _fake_version(tmp_path / "3", False, "2")
    with pytest.raises(UserError, match="reason"):
        registry.set_champion("m", "3", "promote (manual)", " ")
    event = registry.set_champion("m", "3", "promote (manual)", "hotfix approved by risk")
    assert (event["from_version"], event["to_version"]) == ("2", "3") and "@" in event["who"]
    assert registry.show("m@champion")["version"] == 3
    registry.rollback("m", "v3 misbehaves on live data")
    assert registry.show("m@champion")["version"] == 2
    registry.rollback("m", "v2 too")
    assert registry.show("m@champion")["version"] == 1
    with pytest.raises(UserError, match="nothing to roll back"):
        registry.rollback("m", "again")
    actions = [(e["action"], e["from_version"], e["to_version"]) for e in registry.history("m")]
    assert actions == [("promote (gate)", None, "1"), ("promote (gate)", "1", "2"), ("promote (manual)", "2", "3"),
                       ("rollback", "3", "2"), ("rollback", "2", "1")]


def _race(tmp_path: Path, name: str, lock: bool) -> list[str]:
    """Two processes register a gated version against 'no champion' at the same moment (tests.registry_helpers.race_child)."""
    return start_race([tmp_path / f"{name}{i}" for i in range(2)], "" if lock else "lock", name)


def test_two_processes_cannot_both_become_champion(lmops_home, tmp_path):
    """Both gated against 'no champion'; the lock + compare-and-set lets exactly one win."""
    assert _race(tmp_path, "race", lock=True) == ["False", "True"]
    assert len(registry.show("race@1")["aliases"] + registry.show("race@2")["aliases"]) == 2
    assert [e["to_version"] for e in registry.history("race")] in (["1"], ["2"])


@pytest.mark.slow
def test_without_the_lock_the_forced_race_promotes_both(lmops_home, tmp_path):
    """The test above can fail: the same forced interleaving with the lock taken away promotes both."""
    assert raced(_race(tmp_path, "nolock", lock=False))


def test_verify_detects_missing_artifacts(lmops_home, tmp_path):
    _fake_version(tmp_path / "1", True, None)
    assert [r["ok"] for r in registry.verify()] == [True]
    source = registry.show("m@1")["source"]
    Path(source.removeprefix("file://"), "model.safetensors").unlink()
    r = run_cli("models", "verify", "--json", env={"LMOPS_HOME": str(lmops_home)}, cwd=tmp_path)
    assert r.returncode == 5
    assert json.loads(r.stdout.splitlines()[-1])["broken"][0]["missing"] == ["model.safetensors"]


@pytest.mark.integration
def test_audit_matches_the_run_and_restore_reproduces_it(prefect_api, project, lmops_home, tmp_path):
    from lmops.flows.pipeline import pipeline
    from tests.conftest import FIXTURES

    # the labeled source lives in the project, so it can change after the model was made
    (project / "sources").mkdir()
    shutil.copy(FIXTURES / "sentfin_sample.csv", project / "sources" / "sentfin.csv")
    tree = yaml.safe_load((project / "params.yaml").read_text())
    tree["ingest"]["sources"][0]["path"] = "sources/sentfin.csv"
    (project / "params.yaml").write_text(yaml.safe_dump(tree))
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "own source"], cwd=project, check=True)
    params = load_params(project / "params.yaml")
    first = pipeline(params=params.to_dict(), project_root=str(project))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()

    r = run_cli("audit", "finance-sentiment@1", "--json", cwd=project, env={"LMOPS_HOME": str(lmops_home)})
    assert r.returncode == 0, r.stderr
    lin = json.loads(r.stdout.splitlines()[-1])
    assert lin["data_version"] == first["data_version"] and lin["git_commit"] == head and lin["validation"] is True
    assert lin["params"] == params.to_dict() and lin["params_hash"] == params.hash()
    assert lin["metrics"]["macro_f1"] == pytest.approx(first["metrics"]["macro_f1"])
    text = run_cli("audit", "finance-sentiment@1", cwd=project, env={"LMOPS_HOME": str(lmops_home)}).stdout
    assert f"DVC md5 {first['data_version']}" in text and "promote (gate)" in text

    dest = tmp_path / "restored"
    r = run_cli("audit", "finance-sentiment@1", "--restore", str(dest), "--json", cwd=project, env={"LMOPS_HOME": str(lmops_home)})
    assert r.returncode == 0, r.stderr
    from lmops.tasks.version import read_data_version

    assert read_data_version(dest / "data.dvc") == first["data_version"]
    import pandas as pd

    assert pd.read_parquet(dest / "data" / "test.parquet").equals(pd.read_parquet(Path(first["run_dir"]) / "ingest" / "test.parquet"))
    assert (dest / "code" / "params.yaml").exists() and "Reproduce" in (dest / "AUDIT.md").read_text()
    # the whole remote section travels (in config.local: it may hold credentials), not only its URL
    assert str(lmops_home / "dvc-remote") in (dest / ".dvc" / "config.local").read_text()

    # The sources change afterwards (half the headlines are gone)...
    src = project / "sources" / "sentfin.csv"
    lines = src.read_text().splitlines(keepends=True)
    src.write_text("".join(lines[: len(lines) // 2]))
    # ...and the recorded recipe, run from the restored folder, still trains on the restored data: the same data
    # version and, with the same params and seed, the same model
    recipe = (dest / "AUDIT.md").read_text()
    assert "lmops run --params ../params.yaml --data ../data" in recipe and "cd code" in recipe
    again = pipeline(params=load_params(dest / "params.yaml").to_dict(), project_root=str(dest / "code"), snapshot=str(dest / "data"))
    assert again["data_version"] == first["data_version"] and again["rows"] == first["rows"]
    assert again["metrics"] == pytest.approx(first["metrics"], abs=1e-6)
    cmp = run_cli("compare", "finance-sentiment@1", "finance-sentiment@2", "--json", "--no-score", cwd=project, env={"LMOPS_HOME": str(lmops_home)})
    out = json.loads(cmp.stdout.splitlines()[-1])
    assert out["params_changed"] == {} and out["lineage"]["data_version"][0] == out["lineage"]["data_version"][1]


def test_a_registration_killed_midway_leaves_no_version(lmops_home, tmp_path):
    """SIGKILL while artifacts are being logged: no registered version, nothing for verify to flag."""
    import os
    import signal
    import time

    marker = tmp_path / "logging-started"
    script = textwrap.dedent(f"""
        import sys, time, pathlib
        sys.path.insert(0, {str(REPO)!r})
        from lmops.tasks import registry
        from mlflow.tracking import MlflowClient
        real = MlflowClient.log_artifacts
        def slow(self, *a, **k):
            pathlib.Path({str(marker)!r}).write_text("x")
            time.sleep(60)
            return real(self, *a, **k)
        MlflowClient.log_artifacts = slow
        from tests.registry_helpers import fake_version
        fake_version(pathlib.Path({str(tmp_path / 'w')!r}), True, None, name="killed")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "LMOPS_HOME": str(lmops_home)})
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "child never reached artifact logging"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert registry.list_models() == []
    assert registry.verify() == []


def test_models_load_from_safetensors_only(tmp_path, tiny_lm):
    """A pickle checkpoint (pytorch_model.bin) is refused: loading it could run arbitrary code."""
    import shutil

    import torch

    from lmops.kinds import KINDS
    from lmops.tasks.predict import load_classifier

    _, pre, _ = tiny_lm
    pickled = tmp_path / "pickled"
    shutil.copytree(pre.model_dir, pickled)
    from safetensors.torch import load_file

    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(OSError):
        load_classifier(str(pickled), ["negative", "neutral", "positive"], KINDS["sequence"])


def test_a_failed_restore_leaves_nothing_behind_and_can_be_retried(lmops_home, tmp_path, monkeypatch):
    """A pull from an unreachable S3-compatible remote (its endpoint and credentials in the project's config):
    the error names the remote, the half-filled folder is removed, and the retry fails the same way rather
    than being refused as 'not empty'."""
    from lmops.errors import TransientError
    from lmops.tasks import audit

    proj = tmp_path / "proj"
    proj.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=proj, check=True)
    subprocess.run([*dvc, "remote", "add", "-d", "store", "s3://bucket/lmops"], cwd=proj, check=True, capture_output=True)
    subprocess.run([*dvc, "remote", "modify", "store", "endpointurl", "http://127.0.0.1:9"], cwd=proj, check=True)
    subprocess.run([*dvc, "remote", "modify", "--local", "store", "access_key_id", "KEY"], cwd=proj, check=True)
    assert {"url": "s3://bucket/lmops", "endpointurl": "http://127.0.0.1:9", "access_key_id": "KEY"}.items() <= audit._remote_config(proj).items()
    monkeypatch.setattr(audit, "lineage", lambda ref: {"name": "m", "version": 1, "params": {"project": {"seed": 0}},
                                                       "data_version": "0" * 32 + ".dir", "git_commit": None})
    dest = tmp_path / "restored"
    for _ in range(2):
        with pytest.raises(TransientError, match="s3://bucket/lmops.*removed, retry"):
            audit.restore("m@1", dest, proj)
        assert not dest.exists()
