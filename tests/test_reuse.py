"""Skipping unchanged work across runs: stage results keyed on their inputs, and "no change" instead of a duplicate."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmops.tasks import stagecache


@dataclass
class _Out:
    path: str
    value: int


def _compute(out: Path, value: int, calls: list):
    def run():
        calls.append(value)
        out.mkdir(parents=True, exist_ok=True)
        (out / "weights.bin").write_bytes(bytes([value]) * 1000)
        return _Out(path=str(out / "weights.bin"), value=value)

    return run


def test_a_stage_result_is_reused_only_for_the_same_key_and_rerooted_to_the_new_run(lmops_home, tmp_path):
    calls: list[int] = []
    key = stagecache.stage_key("demo", {"data": "abc", "lr": 0.1})
    first, hit = stagecache.reuse("demo", key, tmp_path / "run1" / "demo", _compute(tmp_path / "run1" / "demo", 1, calls), lambda d: _Out(**d))
    assert hit is None and calls == [1]

    out2 = tmp_path / "run2" / "demo"
    second, hit = stagecache.reuse("demo", key, out2, _compute(out2, 2, calls), lambda d: _Out(**d))
    assert calls == [1], "same key: nothing recomputed"
    assert hit.origin == str(tmp_path / "run1") and second == _Out(path=str(out2 / "weights.bin"), value=1)
    assert (out2 / "weights.bin").read_bytes() == bytes([1]) * 1000

    # one input differs (the params, or the code version through stage_key): a new key, computed afresh
    other = stagecache.stage_key("demo", {"data": "abc", "lr": 0.2})
    assert other != key
    _, hit = stagecache.reuse("demo", other, tmp_path / "run3" / "demo", _compute(tmp_path / "run3" / "demo", 3, calls), lambda d: _Out(**d))
    assert hit is None and calls == [1, 3]


def test_a_half_written_entry_is_never_read_and_the_cache_is_bounded(lmops_home, tmp_path):
    calls: list[int] = []
    key = stagecache.stage_key("demo", {"x": 1})
    # a writer killed before its rename leaves only a temporary folder: not an entry
    (stagecache.cache_root() / "demo" / f".{key}.999.tmp" / "out").mkdir(parents=True)
    _, hit = stagecache.reuse("demo", key, tmp_path / "a", _compute(tmp_path / "a", 1, calls), lambda d: _Out(**d))
    assert hit is None and calls == [1]

    for i in range(2, 5):
        stagecache.reuse("demo", stagecache.stage_key("demo", {"x": i}), tmp_path / f"r{i}", _compute(tmp_path / f"r{i}", i, calls),
                         lambda d: _Out(**d))
    entries = sorted(stagecache.cache_root().glob("demo/[!.]*"))
    assert len(entries) == 4
    # 4 entries of 1000 bytes (+ summaries); a bound of ~2.5 of them keeps the most recently used
    gone = stagecache.prune(2.6e-6)
    assert len(gone) == 2 and all(not g.exists() for g in gone)
    assert stagecache.cache_root() / "demo" / key in gone, "the least recently used went first"


def test_keys_follow_data_bytes_and_model_folders(tmp_path):
    a = tmp_path / "m"
    a.mkdir()
    (a / "config.json").write_text("{}")
    before = stagecache.model_identity(a)
    assert stagecache.model_identity(a) == before
    (a / "config.json").write_text('{"hidden": 1}')
    assert stagecache.model_identity(a) != before
    assert stagecache.model_identity("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.integration
@pytest.mark.slow  # the default run keeps the same checks, shorter, in tests/test_flow.py (no change, pretraining reused)
def test_nothing_changed_records_no_change_and_a_finetune_change_reuses_pretraining(prefect_api, project, lmops_home):
    from lmops.config import load_params
    from lmops.flows.pipeline import pipeline
    from lmops.tasks import registry

    p = load_params(project / "params.yaml")
    first = pipeline(params=p.to_dict(), project_root=str(project))
    assert first["model"]["version"] == 1 and first["reused"] == [] and not first["no_change"]
    assert registry.show("finance-sentiment@1")["code_version"] == stagecache.code_version()

    # nothing changed (an operational section aside): no retraining, no duplicate version, the reason recorded
    again = pipeline(params=load_params(project / "params.yaml", overrides=["schedule.cron=0 3 * * *"]).to_dict(), project_root=str(project))
    assert again["no_change"] and again["model"]["version"] == 1 and "unchanged since finance-sentiment v1" in again["reason"]
    assert json.loads((Path(again["run_dir"]) / "run.json").read_text())["no_change"]
    assert [m["latest_version"] for m in registry.list_models()] == [1]
    assert not (Path(again["run_dir"]) / "pretrain").exists(), "no stage after ingest ran"

    # only fine-tuning params changed: ingest, tokenization and pretraining are reused, fine-tuning runs
    third = pipeline(params=load_params(project / "params.yaml", overrides=["finetune.lr=5e-4"]).to_dict(), project_root=str(project))
    assert not third["no_change"] and third["model"]["version"] == 2
    assert "pretrain" in third["reused"] and "ingest" in third["reused"] and "finetune" not in third["reused"]
    run1, run3 = Path(first["run_dir"]), Path(third["run_dir"])
    assert json.loads((run3 / "pretrain" / "REUSED.json").read_text())["origin"] == str(run1)
    assert (run3 / "pretrain" / "model" / "model.safetensors").read_bytes() == (run1 / "pretrain" / "model" / "model.safetensors").read_bytes()
    assert third["pretrain"] == first["pretrain"]


def test_a_version_whose_promotion_was_interrupted_is_not_called_unchanged(lmops_home, tmp_path):
    """A run killed between registering a gate-passing version and moving the alias: the re-run must not say
    "no change" and leave the decision undone (the fault suite kills at registry.before_alias end to end)."""
    from lmops.tasks import registry

    def version(tags, promote, sub):
        d = tmp_path / sub
        d.mkdir()
        (d / "config.json").write_text("{}")
        run_id, source = registry.log_candidate("exp", sub, {}, {"macro_f1": 0.5}, {}, {"model": d})
        return registry.register_version("m", run_id, source, tags, promote, registry.get_version("m", registry.CHAMPION) and "1")

    version({"gate_promote": "true"}, True, "a")
    assert registry.promotion_settled("m", 1)
    version({"gate_promote": "false"}, False, "b")
    assert registry.promotion_settled("m", 2), "a version its gate refused has nothing left to do"
    version({"gate_promote": "true"}, False, "c")  # passed its gate, the alias never moved
    assert not registry.promotion_settled("m", 3)


def test_a_run_with_nothing_new_still_notices_a_champion_whose_files_are_gone(lmops_home, tmp_path):
    from lmops.errors import RegistryError
    from lmops.tasks import registry

    d = tmp_path / "m"
    d.mkdir()
    for name in registry.REQUIRED_FILES:
        (d / name).write_text("{}")
    run_id, source = registry.log_candidate("exp", "r", {}, {"macro_f1": 0.5}, {}, {"model": d})
    registry.register_version("m", run_id, source, {}, True, None)
    champion = registry.get_version("m", registry.CHAMPION)
    registry.require_artifacts(champion)  # complete: nothing raised
    Path(source.removeprefix("file://"), registry.REQUIRED_FILES[0]).unlink()
    with pytest.raises(RegistryError, match=f"m v1 is registered but its artifacts lack \\['{registry.REQUIRED_FILES[0]}'\\]"):
        registry.require_artifacts(champion)


def test_a_cache_hit_is_told_on_stderr_so_json_output_stays_one_line(lmops_home, tmp_path, tiny_params, capsys):
    """`lmops compare … --json` printed the reuse notice on stdout before its JSON line, so a script reading the
    result broke on the second run of the same comparison."""
    from lmops.tasks.stages import _reuse

    calls: list[int] = []
    for run in ("run1", "run2"):
        out = tmp_path / run / "demo"
        _reuse(tiny_params, "demo", {"data": "abc"}, out, _compute(out, 1, calls), lambda d: _Out(**d))
    captured = capsys.readouterr()
    assert calls == [1] and captured.out == ""
    assert "demo: inputs unchanged since" in captured.err and (tmp_path / "run2" / "demo" / "REUSED.json").exists()
