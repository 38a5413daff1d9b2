"""The pipeline flow: ingest → validate → version → tokenize → pretrain → finetune → evaluate → gate → register.

Run: ``lmops run [--params FILE] [key.path=value ...]`` (or ``make run``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, runtime

from flows.stages import png_markdown, publish, stage
from lmops.config import Params, params_from_dict
from lmops.env import dvc_remote_dir, new_run_dir
from lmops.models import resolve_model_ref


@stage
def ingest(p: Params, run: Path):
    from tasks.ingest import ingest as ingest_fn

    summary = ingest_fn(p.ingest, p.validate_.labels, run / "ingest", p.project.seed, p.finetune.task)
    rows = "\n".join(f"| {n} | {c.rows_in} | {c.kept} | {c.quarantined} | {c.duplicates} |" for n, c in summary.sources.items())
    publish("ingest-summary", "| source | rows in | kept | quarantined | duplicates |\n|---|---:|---:|---:|---:|\n" + rows
            + f"\n\nsplits: {summary.splits} · corpus rows: {summary.corpus_rows}\n", "rows in = kept + quarantined + duplicates, per source")
    return summary


@stage
def validate(p: Params, run: Path, root: Path):
    from tasks.validate import validate_snapshot

    try:
        # the previous data version is the snapshot data.dvc points at now, before this run replaces it
        report = validate_snapshot(run / "ingest", p.validate_, run / "validate", p.finetune.task, previous_dir=root / "data")
    finally:
        md = run / "validate" / "validation.md"
        if md.exists():
            publish("data-validation", md.read_text(), "Great Expectations suites on labeled data and corpus")
    return report


@stage(retries=2)
def version(run: Path, root: Path):
    from tasks.version import snapshot

    return snapshot(root, run / "ingest", dvc_remote_dir())


@stage
def tokenize(p: Params, run: Path):
    from tasks.tokenize import tokenize_corpus

    return tokenize_corpus(run / "ingest" / "corpus.parquet", p.tokenize, p.pretrain.objective, p.pretrain.base_model, run / "tokenize")


@stage
def pretrain(p: Params, run: Path, tok):
    import shutil

    from tasks.pretrain import pretrain as pretrain_fn, resume_dir

    # Checkpoints outside the run folder, keyed by data + params: re-running a killed flow resumes here.
    ckpt = resume_dir(tok.cache_key, p.pretrain, p.project.seed)
    s = pretrain_fn(Path(tok.blocks_path), Path(tok.tokenizer_dir), p.pretrain, p.project.seed, run / "pretrain", checkpoint_dir=ckpt)
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: nothing left to resume
    publish("pretrain-loss", f"# Pretraining ({s.objective})\n\nsteps {s.steps} · tokens {s.tokens} · {s.tokens_per_s} tokens/s · "
            f"held-out loss {s.eval_loss} · perplexity {s.perplexity}" + (f" · MFU {s.mfu:.1%}" if s.mfu else "") + "\n\n" + png_markdown(s.loss_plot, "loss"), "pretraining loss curve")
    return s


@stage
def finetune(p: Params, run: Path, base: str):
    from tasks.finetune import finetune as finetune_fn

    d = run / "ingest"
    s = finetune_fn(d / "train.parquet", d / "validation.parquet", base, p.validate_.labels, p.finetune, p.project.seed, run / "finetune")
    publish("finetune-loss", f"# Fine-tuning ({s.method})\n\ntrainable {s.trainable_params} / {s.total_params} params · best epoch {s.best_epoch} · "
            f"val macro-F1 {s.val_macro_f1}\n\n" + png_markdown(s.loss_plot, "loss"), "fine-tuning loss curve")
    return s


@stage
def evaluate(p: Params, run: Path, model_dir: str):
    from tasks.evaluate import evaluate_model

    r = evaluate_model(Path(model_dir), run / "ingest" / "test.parquet", p.validate_.labels, p.finetune.max_length, p.evaluate.batch_size,
                       run / "evaluate", title="Candidate on the test split", task=p.finetune.task)
    publish("evaluation", Path(r.report_path).read_text() + "\n" + png_markdown(r.confusion_plot, "confusion matrix"), "candidate test metrics")
    return r


@stage(retries=2)
def gate(p: Params, run: Path, candidate):
    """Score the current champion now on the same test split, then decide."""
    from tasks import registry
    from tasks.evaluate import evaluate_model
    from tasks.gate import decide

    champ = registry.get_version(p.register_.model_name, registry.CHAMPION)
    champ_metrics = None
    if champ is not None:
        local = registry.download_model(champ.source, run / "gate" / "champion")
        r = evaluate_model(local, run / "ingest" / "test.parquet", p.validate_.labels, p.finetune.max_length, p.evaluate.batch_size,
                           run / "gate" / "champion-eval", title=f"Champion v{champ.version} on the same test split", task=p.finetune.task)
        champ_metrics = r.headline()
    decision = decide(candidate.headline(), champ_metrics, p.gate, str(champ.version) if champ else None)
    (run / "gate").mkdir(parents=True, exist_ok=True)
    (run / "gate" / "decision.json").write_text(json.dumps(decision.to_dict(), indent=2))
    publish("gate-decision", decision.to_markdown(), "champion/challenger decision")
    return decision


@stage(retries=2)
def register(p: Params, run: Path, root: Path, data, report, pre, ft, ev, decision):
    import sys

    from tasks import registry
    from tasks.modelcard import write_model_card
    from tasks.readback import check_readback
    from tasks.version import git_info

    lineage = {
        "data_version": data.md5,
        "params_hash": p.hash(),
        **{k: str(v).lower() if isinstance(v, bool) else str(v or "") for k, v in git_info(root).items()},
        "flow_run_id": str(runtime.flow_run.id or ""),
        "deployment_id": str(runtime.deployment.id or ""),
        "parent_model": p.finetune.base_model or (pre.model_dir if pre else ""),
        "finetune_method": ft.method,
        "gate_promote": str(decision.promote).lower(),
        "gate_reasons": json.dumps(decision.reasons),
        "run_dir": str(run),
        "validation": f"passed ({len(report.outcomes)}/{len(report.outcomes)} expectations)",
    }
    metrics = {**ev.headline(), **ev.extra(), "val_macro_f1": ft.val_macro_f1, "trainable_params": ft.trainable_params}
    if pre:
        metrics.update(pretrain_perplexity=pre.perplexity, pretrain_eval_loss=pre.eval_loss, pretrain_tokens_per_s=pre.tokens_per_s)
    (run / "params.json").write_text(json.dumps(p.to_dict(), indent=2))
    card = write_model_card(run / "model_card.md", p.register_.model_name, lineage, metrics, p.to_dict(),
                            Path(ev.report_path).read_text(), " ".join(["lmops", *sys.argv[1:]]))
    artifacts = {
        "model": Path(ft.model_dir), "adapter": Path(ft.adapter_dir) if ft.adapter_dir else None, "evaluate": run / "evaluate",
        "validate": run / "validate", "gate": run / "gate" / "decision.json", "lineage": run / "params.json", "model_card": card,
        "plots": Path(ft.loss_plot), "pretrain": Path(pre.loss_plot) if pre else None,
    }
    run_id, source = registry.log_candidate(p.register_.experiment, run.name, p.to_dict(), metrics, lineage, artifacts,
                                            registry.training_curves(pre.history if pre else [], ft.history))
    # Read the logged model back and make sure it predicts what we evaluated before registering it.
    check_readback(source, Path(ev.predictions_path), run / "ingest" / "test.parquet", p.validate_.labels, p.finetune.max_length, run / "readback",
                   task=p.finetune.task)
    reg = registry.register_version(p.register_.model_name, run_id, source, lineage, decision.promote, decision.champion_version,
                                    description="\n".join(decision.reasons))
    return reg


@flow(name="pipeline", log_prints=True)
def pipeline(params: dict[str, Any], project_root: str) -> dict[str, Any]:
    """Ingest → validate → version → tokenize → pretrain → finetune → evaluate → gate → register."""
    p, root, run = params_from_dict(params), Path(project_root), new_run_dir()
    try:
        data_summary = ingest(p, run)
        report = validate(p, run, root)
        data = version(run, root)
        pre = pretrain(p, run, tokenize(p, run)) if p.pretrain.enabled else None
        ft = finetune(p, run, resolve_model_ref(p.finetune.base_model) if p.finetune.base_model else pre.model_dir)
        ev = evaluate(p, run, ft.model_dir)
        decision = gate(p, run, ev)
        reg = register(p, run, root, data, report, pre, ft, ev, decision)
    except Exception:
        (run / "FAILED").write_text("see the Prefect flow run logs\n")
        raise
    summary = {
        "run_dir": str(run), "data_version": data.md5, "rows": {k: v.kept for k, v in data_summary.sources.items()},
        "pretrain": {"steps": pre.steps, "perplexity": pre.perplexity, "tokens_per_s": pre.tokens_per_s} if pre else None,
        "finetune": {"method": ft.method, "val_macro_f1": ft.val_macro_f1, "trainable_params": ft.trainable_params},
        "metrics": ev.headline(), "promoted": reg.promoted, "gate_reasons": decision.reasons,
        "model": {"name": reg.name, "version": int(reg.version), "aliases": reg.aliases, "run_id": reg.run_id},
        "flow_run_id": str(runtime.flow_run.id or ""),
    }
    (run / "run.json").write_text(json.dumps(summary, indent=2))
    return summary





@flow(name="lmops-scheduled", log_prints=True)
def scheduled(params_file: str = "params.yaml", overrides: list[str] | None = None, project_root: str = ".") -> dict[str, Any]:
    """Deployment entry point (schedules, data triggers): params are read where the flow runs.

    ``prefect deploy --prefect-file infra/prefect.yaml`` or ``lmops serve --cron "0 2 * * *"``.
    """
    from lmops.config import load_params

    root = Path(project_root).resolve()
    p = load_params(root / params_file, overrides=overrides)
    return pipeline(params=p.to_dict(), project_root=str(root))
