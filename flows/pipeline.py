"""The pipeline flow: ingest → validate → version → tokenize → pretrain → finetune → [soup | distill] → evaluate → gate → register.

Run: ``lmops run [--params FILE] [key.path=value ...]`` (or ``make run``).

Each step is a stage function of ``tasks/stages.py`` (the CLI calls the same ones) wrapped as a Prefect
task with its artifact; the flow below is the table of contents.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow, runtime

from lmops.config import Params, params_from_dict
from lmops.env import new_run_dir
from lmops.flows.steps import artifact, notify, png_markdown, step
from lmops.layout import RunLayout, Snapshot
from lmops.models import resolve_model_ref
from lmops.tasks import stages


@step
def ingest(p: Params, run: RunLayout, root: Path):
    summary = stages.ingest(p, run, carry_from=Snapshot(root / "data"))
    rows = "\n".join(f"| {n} | {c.rows_in} | {c.kept} | {c.quarantined} | {c.duplicates} |" for n, c in summary.sources.items())
    artifact("ingest-summary", "| source | rows in | kept | quarantined | duplicates |\n|---|---:|---:|---:|---:|\n" + rows
             + f"\n\nsplits: {summary.splits} · corpus rows: {summary.corpus_rows}\n", "rows in = kept + quarantined + duplicates, per source")
    return summary


@step
def adopt(run: RunLayout, snapshot: str):
    summary = stages.adopt(run, Snapshot(Path(snapshot)))
    artifact("ingest-summary", f"Data taken unchanged from the snapshot `{snapshot}` (no sources read).\n\nsplits: {summary.splits} · "
             f"corpus rows: {summary.corpus_rows}\n", "the run's data: an existing snapshot")
    return summary


@step
def unchanged(p: Params, run: RunLayout, root: Path):
    same = stages.unchanged(p, run, root)
    if same:
        artifact("no-change", f"# No change\n\nData version `{same['data_version']}`, params (hash `{p.model_hash()}`) and code "
                 f"(`{same['code_version']}`) are those of **{same['name']} v{same['version']}** (aliases: "
                 f"{', '.join(same['aliases']) or 'none'}). Nothing was retrained and nothing registered.\n",
                 "the run found nothing new to train on")
    return same


@step
def validate(p: Params, run: RunLayout, root: Path):
    try:
        # the previous data version is the snapshot data.dvc points at now, before this run replaces it
        return stages.validate(p, run, previous=stages.previous_version(root, run))
    finally:
        md = run.validate / "validation.md"
        if md.exists():
            artifact("data-validation", md.read_text(), "Great Expectations suites on labeled data and corpus")


@step(retries=2)
def version(run: RunLayout, root: Path):
    from lmops.env import dvc_remote_dir

    data = stages.version(run, root)
    if data.remote == "lmops-local" and (runtime.deployment.id or runtime.flow_run.parent_deployment_id):
        # fine on one machine with one LMOPS_HOME; a worker in a fresh clone or container loses the folder with it
        print(f"warning: data version {data.md5} was pushed to the local DVC remote {dvc_remote_dir()}, which a worker that starts "
              "from a fresh clone or container does not have: give the project a shared remote (dvc remote add -d storage s3://…)")
    return data


@step
def tokenize(p: Params, run: RunLayout):
    return stages.tokenize(p, run.data, run.stage("tokenize"))


@step
def pretrain(p: Params, run: RunLayout, tok):
    from lmops.tasks.checkpoints import claim, resume_dir, resume_key

    # Checkpoints outside the run folder, keyed by data + params: re-running a killed flow resumes here. The
    # tokenize step's cache key already hashes the corpus (the key stages.pretrain_key computes for the CLI).
    ckpt = resume_dir(resume_key(tok.cache_key, p.pretrain, p.project.seed))
    with claim(ckpt):  # one run at a time owns these checkpoints
        s = stages.pretrain(p, tok, run.stage("pretrain"), checkpoint_dir=ckpt)
        shutil.rmtree(ckpt, ignore_errors=True)  # finished: nothing left to resume
    artifact("pretrain-loss", f"# Pretraining ({s.objective})\n\nsteps {s.steps} · tokens {s.tokens} · {s.tokens_per_s} tokens/s · "
             f"held-out loss {s.eval_loss} · perplexity {s.perplexity}" + (f" · MFU {s.mfu:.1%}" if s.mfu else "") + "\n\n"
             + png_markdown(s.loss_plot, "loss"), "pretraining loss curve")
    return s


@step
def finetune(p: Params, run: RunLayout, base: str):
    s = stages.finetune(p, run.data, base, run.stage("finetune"))
    artifact("finetune-loss", f"# Fine-tuning ({s.method})\n\ntrainable {s.trainable_params} / {s.total_params} params · best epoch {s.best_epoch}"
             f"{' (averaged weights)' if s.best_weights == 'averaged' else ''} · val macro-F1 {s.val_macro_f1}\n\n" + png_markdown(s.loss_plot, "loss"), "fine-tuning loss curve")
    return s


@step
def distill(p: Params, run: RunLayout, teacher):
    s = stages.distill_candidate(p, run.data, teacher, run.stage("distill"))
    artifact("distill-loss", f"# Distillation ({s.method})\n\nstudent {s.trainable_params} params from {teacher.total_params} · best epoch "
             f"{s.best_epoch} · val macro-F1 {s.val_macro_f1} (teacher {teacher.val_macro_f1})\n\n" + png_markdown(s.loss_plot, "loss"),
             "distillation loss curve")
    return s


@step
def soup(p: Params, run: RunLayout, base: str, first):
    s = stages.soup_candidate(p, run, base, first)
    names = {m: f"**{Path(m).parent.name}**" if m in s.soup["used"] else Path(m).parent.name for m in s.soup["members"]}
    members = "\n".join(f"| {names[m]} | {v:.4f} |" for m, v in zip(s.soup["members"], s.soup["member_val"]))
    artifact("soup", f"# Soup ({s.soup['method']}) of {len(s.soup['used'])} of {len(s.soup['members'])} members\n\n| member (bold: averaged) | "
             f"validation score |\n|---|---:|\n{members}\n| **soup** | {s.val_select:.4f} |\n\n" + png_markdown(s.loss_plot, "validation scores"),
             "the soup's members and the soup on validation")
    return s


@step
def evaluate(p: Params, run: RunLayout, model_dir: str):
    r = stages.evaluate(p, model_dir, run.data.test, run.stage("evaluate"), "Candidate on the test split")
    artifact("evaluation", Path(r.report_path).read_text() + "\n" + png_markdown(r.confusion_plot, "confusion matrix"), "candidate test metrics")
    return r


@step(retries=2)
def gate(p: Params, run: RunLayout, candidate, model_dir: str, root: Path):
    decision = stages.gate(p, run, candidate, model_dir, root)
    artifact("gate-decision", decision.to_markdown(), "champion/challenger decision")
    return decision


@step(retries=2)
def register(p: Params, run: RunLayout, root: Path, data, report, pre, ft, ev, decision):
    # under a deployment the pipeline is a subflow of `scheduled`: the deployment is its parent's
    return stages.register(p, run, root, data, report, pre, ft, ev, decision, flow_run_id=str(runtime.flow_run.id or ""),
                           deployment_id=str(runtime.deployment.id or runtime.flow_run.parent_deployment_id or ""),
                           root_flow_run_id=str(runtime.flow_run.root_flow_run_id or ""))


@flow(name="pipeline", log_prints=True)
def pipeline(params: dict[str, Any], project_root: str, snapshot: str | None = None, data_version: str | None = None) -> dict[str, Any]:
    """Ingest → validate → version → tokenize → pretrain → finetune → evaluate → gate → register.

    ``snapshot``: train on this existing data snapshot (e.g. one restored by ``lmops audit --restore``)
    instead of ingesting the sources in params. ``data_version``: train on exactly this version of ``data/``
    (a data-arrival trigger); if a newer version has replaced it meanwhile, the run is skipped with that reason,
    because the newer version's own trigger trains on everything."""
    from lmops.tasks.locks import exclusive

    p, root, run = params_from_dict(params), Path(project_root), RunLayout(new_run_dir())
    asked = time.time()
    try:
        # one training of a model name at a time: never two runs racing on data/ and the registry
        with exclusive(f"train-{p.register_.model_name}", p.register_.wait_for_other_run_s, what=f"training {p.register_.model_name}"):
            held = time.time()
            # reading data/ (its batches) and replacing it is one step with respect to data arriving meanwhile
            with exclusive(data_key(root), p.register_.wait_for_other_run_s, what=f"{root}/data"):
                if data_version:
                    current = stages.current_data_version(root)
                    if current != data_version:
                        return _skipped(p, run, data_version, current)
                    data_summary = adopt(run, str(root / "data"))
                else:
                    data_summary = adopt(run, snapshot) if snapshot else ingest(p, run, root)
                same = unchanged(p, run, root) if p.cache.enabled else None
                if same:
                    return _no_change(p, run, same)
                report = validate(p, run, root)
                data = version(run, root)
            pre = pretrain(p, run, tokenize(p, run)) if p.pretrain.enabled else None
            base = resolve_model_ref(p.finetune.base_model) if p.finetune.base_model else pre.model_dir
            ft = finetune(p, run, base)
            if p.soup.enabled:
                ft = soup(p, run, base, ft)  # the soup of this model and the other seeds' is the candidate from here on
            if p.distill.enabled:
                ft = distill(p, run, ft)  # the student is the candidate from here on
            ev = evaluate(p, run, ft.model_dir)
            decision = gate(p, run, ev, ft.model_dir, root)
            reg = register(p, run, root, data, report, pre, ft, ev, decision)
            released = time.time()
    except Exception as exc:
        from lmops.errors import DataError

        run.failed_marker.write_text(f"{type(exc).__name__}: {exc}\nSee the Prefect flow run logs.\n")
        notify(p, "data_rejected" if isinstance(exc, DataError) else "failed",
               {"run_dir": str(run.root), "error": f"{type(exc).__name__}: {exc}", "flow_run_id": str(runtime.flow_run.id or "")})
        raise
    summary = {
        "run_dir": str(run.root), "data_version": data.md5, "rows": {k: v.kept for k, v in data_summary.sources.items()},
        "pretrain": {"steps": pre.steps, "perplexity": pre.perplexity, "tokens_per_s": pre.tokens_per_s} if pre else None,
        "finetune": {"method": ft.method, "val_macro_f1": ft.val_macro_f1, "trainable_params": ft.trainable_params},
        "metrics": ev.headline(), "promoted": reg.promoted, "gate_reasons": decision.reasons,
        "model": {"name": reg.name, "version": int(reg.version), "aliases": reg.aliases, "run_id": reg.run_id},
        "flow_run_id": str(runtime.flow_run.id or ""), "root_flow_run_id": str(runtime.flow_run.root_flow_run_id or ""),
        "no_change": False, "reused": stages.reused(run),
        # when this run held the training lock (epoch seconds), and how long it waited for another run first
        "training_lock": {"waited_s": round(held - asked, 1), "held_from": held, "held_to": released},
    }
    run.summary.write_text(json.dumps(summary, indent=2))
    notify(p, "promoted" if reg.promoted else "not_promoted",
           {"version": int(reg.version), "metrics": summary["metrics"], "data_version": data.md5, "reasons": decision.reasons,
            "run_dir": str(run.root), "flow_run_id": summary["flow_run_id"]})
    return summary


def data_key(root: Path) -> str:
    """The lock name of one project's ``data/``."""
    import hashlib

    return "data-" + hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]


def _skipped(p: Params, run: RunLayout, asked: str, current: str | None) -> dict[str, Any]:
    reason = (f"data version {asked} was replaced by {current} before this run started; that version's own trigger trains on it"
              if current else f"data version {asked} is not the current data/ (no data.dvc, or data/ differs from it)")
    print(f"skipped: {reason}")
    summary = {"run_dir": str(run.root), "data_version": asked, "skipped": True, "no_change": False, "promoted": False, "reason": reason,
               "flow_run_id": str(runtime.flow_run.id or "")}
    run.root.mkdir(parents=True, exist_ok=True)
    run.summary.write_text(json.dumps(summary, indent=2))
    artifact("skipped", f"# Skipped\n\n{reason}\n", "the run had nothing of its own to train on")
    return summary


def _no_change(p: Params, run: RunLayout, same: dict) -> dict[str, Any]:
    summary = {
        "run_dir": str(run.root), "data_version": same["data_version"], "no_change": True, "promoted": False,
        "reason": f"data, params and code unchanged since {same['name']} v{same['version']}: nothing retrained or registered",
        "model": {"name": same["name"], "version": same["version"], "aliases": same["aliases"], "run_id": same["run_id"]},
        "metrics": {k: v for k, v in same["metrics"].items() if k in ("accuracy", "macro_f1", "micro_f1")},
        "flow_run_id": str(runtime.flow_run.id or ""), "reused": stages.reused(run),
    }
    run.summary.write_text(json.dumps(summary, indent=2))
    notify(p, "no_change", {"version": same["version"], "data_version": same["data_version"], "run_dir": str(run.root),
                            "flow_run_id": summary["flow_run_id"]})
    return summary


@flow(name="lmops-scheduled", log_prints=True)
def scheduled(params_file: str = "params.yaml", overrides: list[str] | None = None, project_root: str = ".",
              layers: list[str] | None = None, data_version: str | None = None) -> dict[str, Any]:
    """Deployment entry point (schedules, data triggers): params are read where the flow runs, from
    ``params_file`` with ``layers`` (relative to ``project_root``) and ``overrides`` on top.

    ``data_version``: train on exactly that version (the data-arrival trigger fills it from the event).
    ``lmops serve`` (cron and time zone from the ``schedule`` section) or ``prefect deploy --prefect-file infra/prefect.yaml``.
    """
    from lmops.flows.steps import deployment_params

    root, p = deployment_params(params_file, overrides, project_root, layers)
    return pipeline(params=p.to_dict(), project_root=str(root), data_version=data_version or None)
