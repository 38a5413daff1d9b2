import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import run_cli


def test_help_imports_no_heavy_library():
    code = "import sys; from lmops.cli import build_parser; build_parser(); print(sorted(m for m in ('torch','prefect','mlflow','transformers','great_expectations','dvc','pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert "run" in run_cli("--help").stdout


def test_package_sets_offline_defaults_without_overriding_the_user():
    code = "import os; os.environ['HF_HUB_OFFLINE']='0'; import lmops; print(os.environ['HF_HUB_OFFLINE'], os.environ['DO_NOT_TRACK'], os.environ['MLFLOW_DISABLE_TELEMETRY'])"
    env = {k: v for k, v in __import__("os").environ.items() if k not in {"DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY"}}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["0", "1", "true"]


def test_config_typo_fails_fast_with_the_key_name(project):
    r = run_cli("run", "pretrain.max_stpes=5", cwd=project)
    assert r.returncode == 2
    assert "pretrain.max_stpes: unknown key" in r.stderr and "Traceback" not in r.stderr


def test_params_layer_file_is_validated(project):
    (project / "bad.yaml").write_text(yaml.safe_dump({"finetune": {"method": "qlora"}}))
    r = run_cli("run", "--params", "bad.yaml", cwd=project)
    assert r.returncode == 2 and "finetune.method" in r.stderr


def test_models_list_and_show_on_an_empty_registry(project, lmops_home):
    r = run_cli("models", "list", "--json", cwd=project, env={"LMOPS_HOME": str(lmops_home)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
    r = run_cli("models", "show", "finance-sentiment@champion", "--json", cwd=project, env={"LMOPS_HOME": str(lmops_home)})
    assert r.returncode == 2 and "no model version" in r.stderr


def test_init_creates_dvc_repo_with_local_default_remote(project, lmops_home):
    r = run_cli("init", "--json", cwd=project, env={"LMOPS_HOME": str(lmops_home)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["dvc_remote"] == "lmops-local"
    assert "analytics = False" in (project / ".dvc" / "config").read_text()
    assert str(lmops_home / "dvc-remote") in (project / ".dvc" / "config.local").read_text()


def test_run_data_must_be_a_snapshot(project, tmp_path):
    """`lmops run --data DIR` trains on an existing snapshot; a folder that is not one is refused up front."""
    (tmp_path / "notdata").mkdir()
    (tmp_path / "notdata" / "train.parquet").write_bytes(b"")
    r = run_cli("run", "--data", str(tmp_path / "notdata"), cwd=project)
    assert r.returncode == 2 and "is not an lmops data snapshot" in r.stderr and "validation.parquet" in r.stderr, r.stderr


def test_a_model_argument_before_overrides_is_the_model():
    """argparse fills `overrides` (nargs=*) first: `lmops evaluate MODEL k=v` used to take k=v as the model."""
    from lmops.cli import _positional_before_overrides, build_parser, parse

    p = build_parser()
    for argv, attr in ((["evaluate", "m@champion", "a.b=1", "c=2"], "model"), (["export", "m@1", "a.b=1"], "ref"), (["evaluate", "m"], "model")):
        args = p.parse_args(argv)
        _positional_before_overrides(args)
        assert getattr(args, attr) == argv[1] and args.overrides == argv[2:], vars(args)
    cmp = p.parse_args(["compare", "m@2", "a.b=1"])  # the optional second model: an override in its place is an override
    assert (cmp.first, cmp.second, cmp.overrides) == ("m@2", "a.b=1", [])  # cmd_compare moves it (tested through test_flow)
    # overrides after the options are overrides too (argparse alone leaves them unrecognized); anything else is an error
    args = parse(["evaluate", "m@champion", "--data", "f.csv", "--json", "a.b=1", "c={x: y}"])
    assert (args.model, args.data, args.json, args.overrides) == ("m@champion", "f.csv", True, ["a.b=1", "c={x: y}"])
    with pytest.raises(SystemExit):
        parse(["evaluate", "m@champion", "--data", "f.csv", "stray"])


def test_a_stage_refuses_a_project_snapshot_of_another_task(project, lmops_home, ingested):
    """A stage command reads the project's versioned data/; NER params in a sentiment project got a KeyError from
    deep in fine-tuning. Now: a clear error naming the labels and the way out, before any training."""
    import shutil

    shutil.copytree(ingested[0], project / "data")
    (project / "other.yaml").write_text(yaml.safe_dump({"validate": {"labels": ["bearish", "bullish", "neutral"]},
                                                      "monitor": {"positive_label": "bullish", "negative_label": "bearish"}}))
    r = run_cli("finetune", "--params", "other.yaml", "--base", "never-read", cwd=project, env={"LMOPS_HOME": str(lmops_home)})
    assert r.returncode == 2, r.stderr
    assert "holds labels ['negative', 'positive']" in r.stderr and "another task" in r.stderr and "Traceback" not in r.stderr
