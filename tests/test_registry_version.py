import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lmops.tasks import registry
from lmops.tasks.version import git_info, read_data_version, snapshot


def _fake_model(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    return d


def _register(tmp_path, promote, expected, name="m"):
    run_id, source = registry.log_candidate("exp", "r", {"a": {"b": 1}}, {"macro_f1": 0.5}, {"data_version": "abc.dir"}, {"model": _fake_model(tmp_path)})
    return registry.register_version(name, run_id, source, {"data_version": "abc.dir", "git_commit": "deadbeef"}, promote, expected)


def test_champion_moves_only_on_promotion(lmops_home, tmp_path):
    v1 = _register(tmp_path / "1", True, None)
    assert v1.promoted and str(registry.get_version("m", "champion").version) == "1"
    v2 = _register(tmp_path / "2", False, "1")
    assert not v2.promoted and v2.aliases == ["challenger"]
    assert str(registry.get_version("m", "champion").version) == "1"
    info = registry.show("m@champion")
    assert info["version"] == 1 and info["aliases"] == ["champion"] and info["data_version"] == "abc.dir"
    assert info["metrics"] == {"macro_f1": 0.5}
    assert registry.show("m@2")["aliases"] == ["challenger"]
    assert registry.list_models() == [{"name": "m", "versions": 2, "latest_version": 2, "aliases": {"champion": 1, "challenger": 2}}]
    # artifacts live under LMOPS_HOME, not in a stray ./mlruns
    assert info["source"].startswith(str(lmops_home)) or info["source"].startswith("file://" + str(lmops_home))


def test_compare_and_set_refuses_a_stale_champion(lmops_home, tmp_path):
    _register(tmp_path / "1", True, None)
    _register(tmp_path / "2", True, "1")  # champion is now v2
    late = _register(tmp_path / "3", True, "1")  # gated against v1, but v2 won meanwhile
    assert not late.promoted and "champion moved from v1 to v2" in late.reason
    assert str(registry.get_version("m", "champion").version) == "2"


def test_show_unknown_model_is_a_user_error(lmops_home):
    from lmops.errors import UserError

    with pytest.raises(UserError, match="lmops models list"):
        registry.show("nope@champion")


def test_dvc_snapshot_versions_and_pushes(project, lmops_home, ingested):
    data, _, _ = ingested
    v = snapshot(project, data, lmops_home / "remote")
    assert v.md5.endswith(".dir") and v.pushed and read_data_version(project / "data.dvc") == v.md5
    assert (project / "data" / "train.parquet").exists()
    assert any((lmops_home / "remote").rglob("*")), "nothing pushed to the local remote"
    assert "/data" in (project / ".gitignore").read_text()
    # same snapshot again → same version; changed data → a new version
    assert snapshot(project, data, lmops_home / "remote").md5 == v.md5
    changed = project.parent / "changed"
    changed.mkdir()
    for f in data.iterdir():
        (changed / f.name).write_bytes(f.read_bytes())
    pd.read_parquet(data / "train.parquet").head(10).to_parquet(changed / "train.parquet", index=False)
    assert snapshot(project, changed, lmops_home / "remote").md5 != v.md5
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    info = git_info(project)
    assert info["git_commit"] and info["git_dirty"] is True


def test_a_champion_whose_artifacts_are_gone_stops_the_gate_as_a_registry_error(lmops_home, tmp_path, tiny_params):
    """The gate downloads the champion to score it: missing weights are a registry inconsistency (exit 5)
    with the way out, not a crash in model loading. `lmops run`'s exit 5 itself: the slow e2e test."""
    from lmops.errors import RegistryError
    from lmops.layout import RunLayout
    from lmops.tasks.stages import gate
    from tests.registry_helpers import fake_version

    fake_version(tmp_path / "1", True, None, name=tiny_params.register_.model_name)
    source = registry.show(f"{tiny_params.register_.model_name}@champion")["source"]
    Path(source.removeprefix("file://"), "model.safetensors").unlink()
    with pytest.raises(RegistryError, match=r"v1 is registered but its artifacts lack \['model.safetensors'\].*lmops models verify"):
        gate(tiny_params, RunLayout(tmp_path / "run"), candidate=None)


def test_an_unreachable_dvc_remote_is_a_transient_error(project, lmops_home, ingested):
    """`lmops run` exits 4 (and the flow retries the version step) when the remote refuses the push."""
    from lmops.errors import TransientError

    data, _, _ = ingested
    snapshot(project, data, lmops_home / "remote")  # sets up the repo and its default local remote
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([str(dvc), "remote", "modify", "--local", "lmops-local", "url", "/proc/lmops-no-such-remote"], cwd=project, check=True,
                   capture_output=True, env=os.environ)
    with pytest.raises(TransientError, match="dvc push to remote 'lmops-local' failed"):
        snapshot(project, data, lmops_home / "remote")
