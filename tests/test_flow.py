"""The whole pipeline under a real Prefect API (the test harness), real DVC, GX and MLflow."""

import json
from pathlib import Path

import pytest

from lmops.config import load_params
from lmops.tasks import registry

pytestmark = pytest.mark.integration


def _flow_run_state(flow_run_id: str) -> str:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state.type.value


def test_pipeline_registers_champion_and_refuses_a_worse_model(prefect_api, project, lmops_home, webhook, monkeypatch):
    from lmops.flows.pipeline import pipeline

    url, received = webhook
    good = load_params(project / "params.yaml", overrides=[f"notify.webhook_url={url}"])
    first = pipeline(params=good.to_dict(), project_root=str(project))
    assert first["promoted"] and first["model"]["version"] == 1
    # the promotion was announced to the webhook (notify.events default: promoted, data_rejected, failed)
    assert [(m["event"], m["model"], m["version"], m["data_version"]) for m in received] == [
        ("lmops.model.promoted", "finance-sentiment", 1, first["data_version"])]

    info = registry.show("finance-sentiment@champion")
    assert info["version"] == 1 and "champion" in info["aliases"]
    assert info["data_version"] == first["data_version"] and info["data_version"].endswith(".dir")
    assert info["data_version"] == (project / "data.dvc").read_text().split("md5: ")[1].split()[0]
    assert info["params_hash"] == good.hash()
    assert len(info["git_commit"]) == 40
    assert info["tags"]["finetune_weights"] == "trained"  # finetune.averaging is off by default
    assert _flow_run_state(info["flow_run_id"]) == "COMPLETED"
    assert info["metrics"]["macro_f1"] == pytest.approx(first["metrics"]["macro_f1"])
    run_dir = Path(first["run_dir"])
    for f in ("pretrain/loss.png", "finetune/loss.png", "evaluate/confusion.png", "evaluate/report.md", "validate/validation.md", "run.json"):
        assert (run_dir / f).exists(), f
    # pretraining and fine-tuning curves are step series in the MLflow run (plottable in its UI)
    curve = registry.client().get_metric_history(info["run_id"], "pretrain/loss")
    pre = json.loads((run_dir / "pretrain" / "pretrain.json").read_text())
    assert [(m.step, m.value) for m in curve] == [(h["step"], pytest.approx(h["loss"])) for h in pre["history"]] and len(curve) > 1
    assert len(registry.client().get_metric_history(info["run_id"], "finetune/val_macro_f1")) >= 1
    # the registered artifact is a complete Hugging Face model
    local = registry.download_model(info["source"], run_dir / "check")
    assert (local / "model.safetensors").exists() and (local / "config.json").exists()

    # A deliberately worse config: the learning rate is so small the classifier stays at its init. The gate also
    # scores an out-of-source set (here: test rows, plus two training rows it must leave out) for both models.
    import pandas as pd

    snap = run_dir / "ingest"
    canary = pd.concat([pd.read_parquet(snap / "test.parquet").head(30), pd.read_parquet(snap / "train.parquet").head(2)])
    canary.rename(columns={"text": "headline", "label": "sentiment"})[["headline", "sentiment"]].to_csv(project / "canary.csv", index=False)
    worse = load_params(project / "params.yaml", overrides=["finetune.lr=1e-9", "finetune.epochs=1", "finetune.class_weighting=false",
                                                            f"notify.webhook_url={url}", "gate.sets.canary.path=canary.csv",
                                                            "gate.sets.canary.text_column=headline", "gate.sets.canary.label_column=sentiment"])
    second = pipeline(params=worse.to_dict(), project_root=str(project))
    assert len(received) == 1  # not promoted: not in notify.events by default
    assert second["metrics"]["macro_f1"] < first["metrics"]["macro_f1"]
    assert not second["promoted"] and second["model"]["version"] == 2
    assert any("< champion v1" in r for r in second["gate_reasons"])
    assert registry.show("finance-sentiment@champion")["version"] == 1
    assert registry.show("finance-sentiment@2")["aliases"] == ["challenger"]
    # the champion was re-scored now, on the same test split
    gate = json.loads((Path(second["run_dir"]) / "gate" / "decision.json").read_text())
    assert gate["champion"]["macro_f1"] == pytest.approx(first["metrics"]["macro_f1"], abs=1e-6)
    # every set is listed: the candidate's interval, the champion's score and the paired difference
    c = gate["sets"]["canary"]
    assert c["n"] == 30 and c["left_out"] == 2 and c["champion"] is not None and len(c["diff"]["macro_f1"]["ci95"]) == 2
    lo, hi = c["ci95"]["macro_f1"]
    assert lo <= c["candidate"]["macro_f1"] <= hi and gate["test"]["diff"]["macro_f1"]["diff"] < 0
    assert any(r.startswith("set canary: macro_f1") for r in gate["reasons"])
    # `lmops compare v2`: v2 − champion rescored now on the versioned test split, the gate's very numbers
    import contextlib
    import io

    from lmops.cli import main

    monkeypatch.chdir(project)
    # not capsys: its stream is closed after the test, and a log handler Prefect creates meanwhile would keep writing to it
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compare", "finance-sentiment@2", "--json"]) == 0
    cmp = json.loads(out.getvalue().strip().splitlines()[-1])
    assert cmp["a"] == "finance-sentiment@1" and cmp["b"] == "finance-sentiment@2" and "finetune.lr" in cmp["params_changed"]
    assert cmp["scored"]["b_minus_a"]["macro_f1"] == gate["test"]["diff"]["macro_f1"]
    assert cmp["scored"]["distinguishable"]["macro_f1"] == (gate["test"]["diff"]["macro_f1"]["ci95"][1] < 0)
    assert "distinguishable from noise" in Path(cmp["scored"]["report"]).read_text()
    # several runs on a side (comma-separated): that side is their mean, and the interval resamples the runs too
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compare", "finance-sentiment@1,finance-sentiment@2", "finance-sentiment@2", "--json"]) == 0
    runs = json.loads(out.getvalue().strip().splitlines()[-1])["scored"]
    assert [r["model"] for r in runs["a"]["runs"]] == ["finance-sentiment@1", "finance-sentiment@2"] and runs["b_minus_a"]["runs"] == {"a": 2, "b": 1}
    assert runs["b_minus_a"]["macro_f1"]["diff"] == pytest.approx(gate["test"]["diff"]["macro_f1"]["diff"] / 2, abs=2e-4)
    assert "two-level bootstrap" in Path(runs["report"]).read_text()
    # only fine-tuning params changed: ingest and pretraining were reused from the first run, not recomputed
    assert "pretrain" in second["reused"] and "ingest" in second["reused"] and "finetune" not in second["reused"]
    assert second["pretrain"] == first["pretrain"]

    # the first params again (an operational section aside): nothing changed, so nothing is trained or registered
    third = pipeline(params=load_params(project / "params.yaml", overrides=["schedule.cron=0 3 * * *"]).to_dict(), project_root=str(project))
    assert third["no_change"] and third["model"]["version"] == 1 and "unchanged since finance-sentiment v1" in third["reason"]
    assert [m["latest_version"] for m in registry.list_models()] == [2] and len(received) == 1

    _monitor_scores_a_stream_with_the_champion(project, good, lmops_home)


def _monitor_scores_a_stream_with_the_champion(project, good, lmops_home):
    """The monitor flow with the champion the pipeline registered: counts, idempotence by id, the drift reference saved at
    registration, the page, a clear error for an unknown alias, and a new champion picked up without a restart."""
    import pandas as pd

    from lmops.config import params_from_dict
    from lmops.errors import UserError
    from lmops.flows.monitor import monitor

    heads = pd.read_csv(Path(__file__).parent / "fixtures" / "sentfin_sample.csv")["Title"].tolist()
    stream = project / "stream.csv"
    rows = [{"id": f"n{i}", "timestamp": f"2026-10-{1 + i % 20:02d}T12:00:00Z", "text": t} for i, t in enumerate(heads[:150])]
    rows += [{"id": "n0", "timestamp": "2026-10-01T12:00:00Z", "text": heads[0]},  # a repeated id
             {"id": "bad1", "timestamp": "not a time", "text": "Infosys results"}, {"id": "bad2", "timestamp": "2026-10-02", "text": " "}]
    pd.DataFrame(rows).to_csv(stream, index=False)
    tree = good.to_dict()
    tree["monitor"].update(entities={"Infosys": {"tickers": ["INFY"]}, "Tata Motors": {}}, drift={"min_rows": 50})
    p = params_from_dict(tree)
    out = monitor(params=p.to_dict(), project_root=str(project), inputs=[str(stream)])
    s = out["scoring"]
    assert (s["rows_in"], s["scored"], s["quarantined"], s["duplicates"]) == (153, 150, 2, 1)
    assert out["model"] == "finance-sentiment" and out["version"] == "1" and out["totals"]["documents"] == 150
    assert out["totals"]["entities"] >= 1 and out["totals"]["mentions"] >= 1
    assert out["drift"]["n"] == 150 and "no reference" not in out["drift"]["verdict"] and len(out["drift"]["checks"]) == 7
    page = Path(out["dashboard"]).read_text()
    assert "finance-sentiment v1" in page and 'id="drift-status"' in page and 'data-entity="(all documents)"' in page
    assert Path(out["plot"]).stat().st_size > 10_000
    # the same file again: nothing counted twice
    again = monitor(params=p.to_dict(), project_root=str(project), inputs=[str(stream)])["scoring"]
    assert (again["scored"], again["duplicates"], again["quarantined"]) == (0, 151, 2)
    # an alias the model does not have: a clear error naming the aliases it has
    with pytest.raises(UserError, match=r"has no alias 'nope' \(its aliases: \['challenger', 'champion'\]\)"):
        monitor(params=params_from_dict({**tree, "monitor": {**tree["monitor"], "alias": "nope"}}).to_dict(), project_root=str(project),
                inputs=[str(stream)])
    # a new champion is used on the next run, in the same process
    registry.set_champion("finance-sentiment", "2", "promote (manual)", "monitor test", force=True)
    more = project / "more.csv"
    pd.DataFrame([{"id": f"m{i}", "timestamp": "2026-10-21T09:00:00Z", "text": t} for i, t in enumerate(heads[150:170])]).to_csv(more, index=False)
    out2 = monitor(params=p.to_dict(), project_root=str(project), inputs=[str(more)])
    assert out2["version"] == "2" and out2["scoring"]["scored"] == 20
    assert {v["version"]: v["n"] for v in out2["totals"]["versions"]} == {"1": 150, "2": 20}

    # fast scoring: the champion as int8 ONNX Runtime, checked on its test split and recorded with the version
    from lmops.tasks.monitor import scoring
    from lmops.tasks.monitor.export import export

    fast = params_from_dict({**tree, "monitor": {**tree["monitor"], "runtime": "onnx", "export_max_delta": 100}})
    with pytest.raises(UserError, match=r"no checked export: run `lmops export finance-sentiment@2`"):
        monitor(params=fast.to_dict(), project_root=str(project), inputs=[str(more)])
    ex = export("finance-sentiment@champion", project, fast, None, lmops_home / "export-check")
    assert ex["passed"] and ex["version"] == "2" and ex["test_rows"] > 50 and ex["agreement"] >= 0.9, ex
    assert set(ex["candidates"]) == {"fp32", "int8", "int8-ffn-fp32", "int8-proj-fp32"} and ex["precision"] in ex["candidates"]
    assert ex["delta_points"] == pytest.approx((ex["macro_f1_exported"] - ex["macro_f1_original"]) * 100, abs=1e-2)
    tags = registry.show("finance-sentiment@2")["tags"]
    assert tags["lmops.export.onnx"] == "passed" and float(tags["lmops.export.onnx.delta_points"]) == ex["delta_points"]
    texts = heads[170:200]
    slow_probs = scoring.load("finance-sentiment", "champion").probabilities(texts, 8, 64)
    fast_probs = scoring.load("finance-sentiment", "champion", runtime="onnx").probabilities(texts, 8, 64)
    assert abs(slow_probs - fast_probs).max() < 0.05
    out3 = monitor(params=fast.to_dict(), project_root=str(project), inputs=[str(stream)])
    assert out3["runtime"] == "onnx" and out3["scoring"]["duplicates"] == 151  # still idempotent by id


def test_failed_validation_stops_before_training_and_registers_nothing(prefect_api, project, lmops_home, webhook):
    from lmops.flows.pipeline import pipeline
    from lmops.errors import DataError

    url, received = webhook
    bad = load_params(project / "params.yaml", overrides=["validate.min_labeled_rows=100000", f"notify.webhook_url={url}"])
    with pytest.raises(DataError, match="expect_table_row_count_to_be_between"):
        pipeline(params=bad.to_dict(), project_root=str(project))
    assert [m["event"] for m in received] == ["lmops.data.rejected"] and "expect_table_row_count_to_be_between" in received[0]["error"]
    runs = list((lmops_home / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "FAILED").exists()
    assert not (runs[0] / "pretrain").exists() and not (runs[0] / "tokenize").exists()
    assert registry.list_models() == []
