"""Helpers importable from a child process (no conftest side effects such as a new LMOPS_HOME)."""

from pathlib import Path

from lmops.tasks import registry


def fake_version(tmp_path: Path, promote: bool, expected, name="m"):
    """Log a minimal model folder and register it, as the pipeline's register step does."""
    d = tmp_path / "model"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"x")
    run_id, source = registry.log_candidate("exp", "r", {"finetune": {"lr": 0.1}}, {"macro_f1": 0.5}, {}, {"model": d})
    return registry.register_version(name, run_id, source, {"data_version": "x.dir"}, promote, expected)
