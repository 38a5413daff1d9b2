"""`lmops sweep`: Optuna over any model params, each trial a nested MLflow run, the best params as a layer."""

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
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


def test_with_out_of_source_sets_a_trial_is_chosen_on_validation_and_the_sets_together(project, lmops_home, tmp_path, monkeypatch):
    """The driver on a known surface: validation prefers one lr, the out-of-source set the other; the weight of the
    sets decides which is best, and each trial keeps both scores."""
    import math

    monkeypatch.chdir(project)
    load = lambda extra: load_params(project / "params.yaml", overrides=extra)  # noqa: E731
    val = lambda lr: 0.9 - 0.1 * (math.log10(lr) + 3)  # noqa: E731 - validation prefers lr 1e-3 ...
    oos = lambda lr: 0.5 + 0.2 * (math.log10(lr) + 3)  # noqa: E731 - ... the out-of-source set 1e-2

    def train(p, out, on_epoch):
        on_epoch(1, val(p.finetune.lr))
        return SimpleNamespace(val_macro_f1=val(p.finetune.lr), lr=p.finetune.lr)

    def score_sets(p, s, out):
        return {"tweets": oos(s.lr)}

    def spec(weight):
        return SweepSpec.model_validate({"name": f"w{weight}", "trials": 6, "pruning": False, "sets_weight": weight,
                                         "space": {"finetune.lr": {"low": 1e-3, "high": 1e-2, "log": True}},
                                         "sets": {"tweets": {"path": "tweets.csv", "label_map": {"0": "negative"}}}})

    for weight, pick in ((0.5, max), (0.1, min)):
        r = run_sweep(spec(weight), load, None, tmp_path / f"s{weight}", train, "lmops", seed=3, progress=False, score_sets=score_sets)
        for t in r.trials:
            lr = t.params["finetune.lr"]
            assert t.validation == pytest.approx(val(lr)) and t.sets == {"tweets": pytest.approx(oos(lr))}
            assert t.value == pytest.approx((1 - weight) * val(lr) + weight * oos(lr))
        tried = [t.params["finetune.lr"] for t in r.trials]
        assert r.best_params["finetune.lr"] == pick(tried)  # 0.5: the set's side wins; 0.1: validation's
        text = Path(r.report).read_text()
        assert "out-of-source sets never trained on (tweets)" in text and "| tweets | value |" in text
        assert "tweets 0." in Path(r.best_layer).read_text().splitlines()[0]
    # continuing a study under another definition of a trial's value would rank old and new trials on two scales
    with pytest.raises(UserError, match="valued as") as err:
        edited = spec(0.5).model_copy(update={"name": "w0.1"})  # the study of the 0.1 sweep, its file edited to 0.5
        run_sweep(edited, load, None, tmp_path / "s0.1", train, "lmops", seed=3, progress=False, score_sets=score_sets)
    assert "'sets_weight': 0.1" in str(err.value) and "'sets_weight': 0.5" in str(err.value)
    with pytest.raises(UserError, match="nothing to score them with"):
        run_sweep(spec(0.5), load, None, tmp_path / "none", train, "lmops", seed=3, progress=False)


def test_lmops_sweep_scores_every_trial_on_its_sets_and_refuses_a_gate_canary(project, lmops_home, tiny_lm, tmp_path, monkeypatch, capsys):
    """The command on the tiny project with real fine-tuning trials: each trial's model is scored on the tweets set
    (its rows read with the ingest rules), and its value is the mix of that score and validation."""
    import mlflow

    from lmops import cli
    from lmops.kinds import KINDS
    from lmops.tasks import stages
    from lmops.tasks.evaluate import evaluate_model
    from tests.conftest import FIXTURES

    _, pre, _ = tiny_lm
    monkeypatch.chdir(project)
    tweets = {"path": str(FIXTURES / "twitter_sample.csv"), "label_map": {"0": "negative", "1": "positive", "2": "neutral"}}
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"name": "oos", "trials": 2, "pruning": False, "sets": {"tweets": tweets},
                                     "space": {"finetune.lr": {"choices": [0.0005, 0.005]}}}))
    out = tmp_path / "sweep"
    base = [f"finetune.base_model={pre.model_dir}", "pretrain.enabled=false", "finetune.epochs=1"]
    args = ["sweep", "--space", str(space), "--out", str(out), *base, "--json"]
    assert cli.main(args) == 0
    p = load_params(project / "params.yaml", overrides=base)
    rows = out / "sets" / "tweets" / "eval.parquet"
    c = mlflow.tracking.MlflowClient()
    runs = {run.data.tags.get("lmops.sweep.trial"): run for run in c.search_runs([c.get_experiment_by_name("lmops").experiment_id])}
    text = (out / "report.md").read_text()
    for trial in sorted(out.glob("trial-*")):
        number = int(trial.name.split("-")[1])
        got = evaluate_model(trial / "finetune" / "model", rows, p.validate_.labels, 64, 32, tmp_path / f"ev{number}", KINDS["sequence"])
        run = runs[str(number)]
        assert run.data.metrics["set.tweets.macro_f1"] == pytest.approx(got.macro_f1, abs=1e-6)
        value = 0.5 * run.data.metrics["best_val_macro_f1"] + 0.5 * got.macro_f1
        assert run.data.metrics["sweep_value"] == pytest.approx(value, abs=1e-6) and f"{value:.4f}" in text
    # the set was read like an ingest source, and what was scored is counted
    assert len(pd.read_parquet(rows)) > 100
    assert f"sweep set tweets: {len(pd.read_parquet(rows))} rows scored; of 150 read" in capsys.readouterr().err
    # a sweep may not choose on the canary the gate judges by
    gated = load_params(project / "params.yaml", overrides=[f"gate.sets={json.dumps({'canary': tweets})}"])
    spec = load_spec(space)
    with pytest.raises(UserError, match="sets.tweets is gate.sets.canary too"):
        stages.sweep_sets(gated, spec, None, tmp_path / "x", project)
