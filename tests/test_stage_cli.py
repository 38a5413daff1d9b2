"""Stage commands as a user runs them: each prints its summary as one JSON line last."""

import json

import pytest

from tests.conftest import run_cli


def _last_json(r):
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def env(lmops_home):
    return {"LMOPS_HOME": str(lmops_home)}


def test_data_ingest_counts_every_row(project, env):
    out = _last_json(run_cli("data", "ingest", "--json", cwd=project, env=env))
    for counts in out["sources"].values():
        assert counts["rows_in"] == counts["kept"] + counts["quarantined"] + counts["duplicates"]
    assert out["validation"]["success"] is True and out["splits"]["test"] > 0


def test_data_ingest_failed_validation_exits_3(project, env):
    r = run_cli("data", "ingest", "--json", "validate.min_labeled_rows=999999", cwd=project, env=env)
    assert r.returncode == 3 and "expect_table_row_count_to_be_between" in r.stderr


def test_stage_commands_do_not_train_on_data_that_fails_validation(project, env, lmops_home):
    for stage in ("finetune", "pretrain"):
        r = run_cli(stage, "--json", "--base" if stage == "finetune" else "pretrain.max_steps=1", *(["pkg:none"] if stage == "finetune" else []),
                    "validate.min_labeled_rows=999999", cwd=project, env=env)
        assert r.returncode == 3 and "expect_table_row_count_to_be_between" in r.stderr and "no training was started" in r.stderr, r.stderr[-2000:]
    assert not list(lmops_home.glob("runs/*finetune*/finetune")) and not list(lmops_home.glob("runs/*pretrain*/pretrain"))


@pytest.mark.slow
def test_pretrain_finetune_evaluate_chain(project, env, tmp_path):
    """The three stage commands chained as a user would (slow tier: the default run drives `lmops pretrain` in
    tests/test_pretrain_engine.py, `lmops finetune` below and `lmops evaluate` in test_server_e2e.py)."""
    pre = _last_json(run_cli("pretrain", "--json", "pretrain.max_steps=4", cwd=project, env=env))
    for key in ("steps", "tokens", "tokens_per_s", "eval_loss", "perplexity", "resumed_from_step"):
        assert key in pre
    assert pre["steps"] == 4

    ft = _last_json(run_cli("finetune", "--json", "--base", pre["model_dir"], "finetune.epochs=1", "finetune.method=lora", cwd=project, env=env))
    for key in ("method", "trainable_params", "total_params", "best_epoch", "val_macro_f1"):
        assert key in ft
    assert ft["method"] == "lora" and ft["trainable_params"] < ft["total_params"]

    data = tmp_path / "mine.csv"
    data.write_text("text,label\nShares of Infosys jump after strong results,positive\nTata Motors slumps on weak sales,negative\n"
                    "Sensex ends flat ahead of policy,neutral\nRupee trades in a narrow range,neutral\nbad row with a label nobody knows,bullish\n")
    ev = _last_json(run_cli("evaluate", ft["model_dir"], "--data", str(data), "--json", cwd=project, env=env))
    assert ev["n"] == 4 and 0 <= ev["macro_f1"] <= 1 and set(ev["per_class"]) == {"negative", "neutral", "positive"}
    # the bad row is counted, not silently dropped
    assert ev["data_rows"] == {"rows_in": 5, "kept": 4, "quarantined": 1, "duplicates": 0, "near_duplicates": 0, "boilerplate_lines": 0}


@pytest.mark.slow  # the default run keeps test_entity_ner's compare-base check (the same code, NER's resampling)
def test_compare_bases_reports_a_bootstrap_interval(project, env, tiny_lm):
    _, pre, _ = tiny_lm
    out = _last_json(run_cli("finetune", "--json", "--base", pre.model_dir, "--compare-base", pre.model_dir, "finetune.epochs=1",
                             cwd=project, env=env))
    cmp = out["compare"]
    # the same base twice, seeded: identical models, so the difference is exactly 0 with a [0, 0] interval
    assert cmp["domain"] == cmp["generic"]
    assert cmp["domain_minus_generic"]["macro_f1"]["diff"] == 0 and cmp["domain_minus_generic"]["macro_f1"]["ci95"] == [0.0, 0.0]
    assert cmp["domain_minus_generic"]["n_test"] > 0


def test_finetune_without_a_base_is_a_user_error(project, env):
    r = run_cli("finetune", "--json", cwd=project, env=env)
    assert r.returncode == 2 and "--base" in r.stderr
