"""`lmops sweep`: Optuna over any model params, each trial a nested MLflow run, the best params as a layer."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lmops.config import load_params
from lmops.errors import UserError
from lmops.tasks.sweep import SweepSpec, check_space, layer_of, load_spec, run_sweep
from tests.conftest import run_cli


def _spec(**kw) -> SweepSpec:
    return SweepSpec.model_validate({"name": "t", "trials": 6, "space": {"finetune.lr": {"low": 1e-5, "high": 1e-1, "log": True},
                                                                           "finetune.epochs": {"choices": [2, 3]}}, **kw})


def test_the_sweep_driver_finds_the_best_trial_prunes_and_continues_its_study(project, lmops_home, tmp_path, monkeypatch):
    """The optimizer plumbing on a known score surface (best near lr 1e-3): real Optuna, real MLflow; the training
    is replaced by that surface so the test is about the driver (the real training: the slow test below)."""
    import math

    import mlflow

    monkeypatch.chdir(project)

    def load(extra):
        return load_params(project / "params.yaml", overrides=extra)

    trained = []

    def train(p, out, on_epoch):
        score = 0.9 - 0.1 * abs(math.log10(p.finetune.lr) + 3)
        trained.append(p.finetune.lr)
        for epoch in range(1, p.finetune.epochs + 1):
            on_epoch(epoch, score - 0.05 * (p.finetune.epochs - epoch))
        return SimpleNamespace(val_macro_f1=score)

    r = run_sweep(_spec(), load, None, tmp_path / "sweep", train, "lmops", seed=3, progress=False)
    done = [t for t in r.trials if t.state == "COMPLETE"]
    assert len(r.trials) == 6 and r.best_value == pytest.approx(max(t.value for t in done), abs=1e-4)
    assert r.best_params == next(t.params for t in done if t.value == pytest.approx(r.best_value, abs=1e-4))
    assert all(t.state in ("COMPLETE", "PRUNED") for t in r.trials)
    # the layer: `lmops run --params best.yaml` trains with the best params
    layered = load_params(project / "params.yaml", layers=[r.best_layer])
    assert layered.finetune.lr == r.best_params["finetune.lr"] and layered.finetune.epochs == r.best_params["finetune.epochs"]
    # each trial is an MLflow run nested under the sweep's run, with its params and its per-epoch curve
    c = mlflow.tracking.MlflowClient()
    children = c.search_runs([c.get_experiment_by_name("lmops").experiment_id], f"tags.mlflow.parentRunId = '{r.mlflow_run_id}'")
    assert len(children) == 6 and {ch.data.tags["lmops.sweep.state"] for ch in children} <= {"COMPLETE", "PRUNED"}
    first = next(ch for ch in children if ch.info.run_id == r.trials[0].mlflow_run_id)
    assert float(first.data.params["finetune.lr"]) == pytest.approx(r.trials[0].params["finetune.lr"])
    assert len(c.get_metric_history(first.info.run_id, "val_macro_f1")) == r.trials[0].params["finetune.epochs"]
    assert Path(r.plot).stat().st_size > 1000 and "**best**" in Path(r.report).read_text()
    # the same command again continues the same study: six trials are done, none is trained again
    trained.clear()
    again = run_sweep(_spec(), load, None, tmp_path / "sweep", train, "lmops", seed=3, progress=False)
    assert trained == [] and len(again.trials) == 6 and again.best_params == r.best_params
    # and asked for two more, it runs two more
    more = run_sweep(_spec(trials=8), load, None, tmp_path / "sweep", train, "lmops", seed=3, progress=False)
    assert len(trained) == 2 and len(more.trials) == 8


def test_a_trial_below_the_median_is_pruned(project, lmops_home, tmp_path, monkeypatch):
    monkeypatch.chdir(project)
    scores = iter([0.8, 0.8, 0.2, 0.8])  # the third trial is far below the first two at every epoch

    def train(p, out, on_epoch):
        s = next(scores)
        for epoch in range(1, 4):
            on_epoch(epoch, s)
        return SimpleNamespace(val_macro_f1=s)

    spec = SweepSpec.model_validate({"name": "p", "trials": 4, "space": {"finetune.lr": {"low": 1e-4, "high": 1e-2}}})
    r = run_sweep(spec, lambda extra: load_params(project / "params.yaml", overrides=extra), None, tmp_path / "s", train, "lmops", 1, False)
    assert [t.state for t in r.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert r.trials[2].epochs == [0.2, 0.2]  # stopped after the first epoch past the warm-up


def test_a_bad_sweep_file_names_every_problem(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"trials": 0, "space": {"ingest.min_chars": {"low": 1, "high": 9}, "finetune.lr": {"choices": [1], "low": 1}}}))
    with pytest.raises(UserError) as err:
        load_spec(bad)
    assert "trials" in str(err.value) and "ingest.min_chars" in str(err.value) and "choices and low/high" in str(err.value)
    spec = SweepSpec.model_validate({"space": {"finetune.lrr": {"low": 0.1, "high": 0.2}, "finetune.epochs": {"choices": [0, 2]}}})
    with pytest.raises(UserError) as err:
        check_space(spec, lambda extra: load_params(project / "params.yaml", overrides=extra))
    assert "finetune.lrr=0.1" in str(err.value) and "finetune.epochs=0" in str(err.value)
    assert layer_of({"finetune.lr": 0.1, "finetune.lora.r": 4}) == {"finetune": {"lr": 0.1, "lora": {"r": 4}}}


@pytest.mark.slow  # the default run keeps the driver's tests above, with real Optuna and MLflow
def test_lmops_sweep_trains_real_trials_and_its_layer_runs(project, lmops_home, tmp_path):
    """The command end to end on the tiny project: real pretraining (shared by the trials through the stage
    cache), real fine-tuning trials, and the best layer accepted by `lmops run --params`."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"name": "tiny", "trials": 3, "space": {"finetune.lr": {"low": 5e-4, "high": 5e-3, "log": True},
                                                                             "finetune.epochs": {"choices": [1, 2]}}}))
    env = {"LMOPS_HOME": str(lmops_home)}
    r = run_cli("sweep", "--space", str(space), "--json", cwd=project, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out["trials"]) == 3 and 0 <= out["best_value"] <= 1
    assert [t["reused"] for t in out["trials"] if t["state"] == "COMPLETE"].count(False) >= 1
    # the trials started from one model (one project.seed): a greedy soup of them is never below the best on validation
    soup = run_cli("soup", "--sweep", str(Path(out["study_db"]).parent), "soup.method=greedy", "--json", cwd=project, env=env)
    assert soup.returncode == 0, soup.stderr[-3000:]
    made = json.loads(soup.stdout.strip().splitlines()[-1])["summary"]
    assert len(made["members"]) == [t["state"] for t in out["trials"]].count("COMPLETE") and made["start"]
    assert made["val_select"] >= max(made["member_val"]) and made["used"][0] == made["members"][made["member_val"].index(max(made["member_val"]))]
    run = run_cli("run", "--params", out["best_layer"], "--json", cwd=project, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["model"]["version"] == 1
