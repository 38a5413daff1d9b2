"""lmops command line. Heavy libraries are imported inside each command so `lmops --help` is instant.

    lmops run [--params FILE] [--data SNAPSHOT_DIR] [key.path=value ...] [--json]
    lmops data ingest | pretrain | finetune [--base M] [--params FILE] [key=value ...] [--json]
    lmops evaluate MODEL [--data FILE] [--json]
    lmops models list [--json]
    lmops models show NAME[@ALIAS|@VERSION] [--json]
    lmops models verify [NAME] [--json]
    lmops audit NAME@VERSION [--json] [--restore DIR]
    lmops promote NAME VERSION --reason TEXT
    lmops rollback NAME --reason TEXT
    lmops compare NAME@A NAME@B [--json]
    lmops distill --teacher NAME@champion [--teacher DIR ...] [distill.layers=[0,2,4]]
    lmops soup --member DIR --member DIR [...] [soup.method=greedy]
    lmops init
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from lmops.env import new_run_dir
from lmops.errors import LmopsError
from lmops.layout import RunLayout, Snapshot


def _params(args: argparse.Namespace):
    from lmops.config import load_params
    from lmops.env import project_root

    base = project_root() / "params.yaml"
    return load_params(base, overrides=args.overrides, layers=args.params or None)


def _emit(obj: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    if as_json:
        print(json.dumps(obj, default=str))
    else:
        print(text(obj))


def cmd_init(args: argparse.Namespace) -> int:
    """Create the local state folder and the DVC repo with its default local remote."""
    from lmops.env import dvc_remote_dir, lmops_home, project_root
    from lmops.tasks.version import ensure_dvc_repo

    home = lmops_home()
    home.mkdir(parents=True, exist_ok=True)
    remote = ensure_dvc_repo(project_root(), dvc_remote_dir())
    _emit({"lmops_home": str(home), "dvc_remote": remote}, args.json, lambda o: f"lmops home: {o['lmops_home']}\nDVC default remote: {o['dvc_remote']}")
    return 0


def _prewarm() -> None:
    """Starting the embedded Prefect API takes seconds, mostly spent waiting for its process: meanwhile import the
    registry and DVC and open the registry's database, which every run needs (a run with nothing new needs little else)."""
    import threading

    def work():
        try:
            import dvc.repo  # noqa: F401

            from lmops.tasks import registry

            registry.client()
        except Exception:  # noqa: BLE001 - only a head start: the run itself reports any real problem
            pass

    threading.Thread(target=work, name="lmops-prewarm", daemon=True).start()


def _run(args: argparse.Namespace, api) -> dict:
    params = _params(args)
    from lmops.flows.pipeline import pipeline
    from lmops.env import project_root

    # checked before the flow starts: a wrong folder is a user error at once
    snapshot = str(Snapshot(Path(args.data).resolve()).require().dir) if args.data else None
    if api:
        _prewarm()
        api.ready()
    return pipeline(params=params.to_dict(), project_root=str(project_root()), snapshot=snapshot)


def _command_api():
    """Without a Prefect server configured, Prefect's throw-away API for this command, starting now so the imports
    that follow overlap its start-up (stopped at exit); None when PREFECT_API_URL names a server."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    from lmops.flows.server import CommandAPI

    return CommandAPI()


def cmd_run(args: argparse.Namespace) -> int:
    api = _command_api()
    summary = _run(args, api)
    from lmops.env import lmops_home, mlflow_tracking_uri

    if not args.json and summary.get("no_change"):
        print(f"\nlmops run finished — no change: {summary['reason']}\n  run directory:   {summary['run_dir']}\n"
              f"  recompute anyway: lmops run cache.enabled=false\n")
    elif not args.json:
        m = summary["model"]
        verdict = "PROMOTED to champion" if summary["promoted"] else "not promoted (champion unchanged)"
        print(
            f"\nlmops run finished — {m['name']} v{m['version']} {verdict}\n"
            f"  test accuracy {summary['metrics']['accuracy']:.4f} · macro-F1 {summary['metrics']['macro_f1']:.4f}\n"
            + "".join(f"  gate: {r}\n" for r in summary["gate_reasons"])
            + f"  run directory:   {summary['run_dir']}\n"
            f"  data version:    {summary['data_version']} (data.dvc; `dvc status`, `dvc push`)\n"
            f"  model registry:  {mlflow_tracking_uri()}\n"
            f"  inspect:         lmops models show {m['name']}@champion --json\n"
            f"  MLflow UI:       .venv/bin/mlflow ui --backend-store-uri {mlflow_tracking_uri()}\n"
            f"  Prefect UI:      PREFECT_HOME={lmops_home() / 'prefect'} .venv/bin/prefect server start  (then http://127.0.0.1:4200)\n"
        )
    print(json.dumps(summary, default=str))
    return 0


def _snapshot(params) -> Snapshot:
    """The versioned snapshot (``data/``) if present, else a fresh ingest into a new run folder."""
    from lmops.env import project_root
    from lmops.tasks import stages

    data = Snapshot(project_root() / "data")
    if data.exists():
        _check_labels(data.summary, params.validate_.labels)
        return data
    run = RunLayout(new_run_dir("ingest"))
    stages.ingest(params, run)
    # a stage command trains only on data that passed the checks `lmops run` would make (exit 3 otherwise)
    stages.validate(params, run, previous=None)
    return run.data


def _check_labels(summary: Path, labels: list[str]) -> None:
    """The project's snapshot must hold the labels these params train on: ``data/`` is what ``lmops run`` last
    versioned, and a stage command with another task's params (NER params in a sentiment project) would otherwise
    fail deep in training on a label it has never heard of."""
    from lmops.errors import UserError

    if not summary.exists():
        return
    found = sorted(json.loads(summary.read_text()).get("label_counts") or {})
    unknown = [label for label in found if label not in labels]
    if unknown:
        raise UserError(
            f"{summary.parent} (the project's versioned data) holds labels {unknown} that validate.labels {labels} "
            "does not list: it was ingested for another task. Run these params in a project of their own (another "
            "folder, or `lmops run` here to version their data), or give the stage the labels the snapshot has.")


def cmd_data_ingest(args: argparse.Namespace) -> int:
    """Ingest + validate only (no versioning, no training)."""
    params = _params(args)
    from lmops.env import project_root
    from lmops.tasks import stages

    run = RunLayout(new_run_dir("ingest"))
    summary = stages.ingest(params, run, carry_from=Snapshot(project_root() / "data"))
    out = {**summary.to_dict(), "run_dir": str(run.root)}
    try:
        report = stages.validate(params, run, previous=stages.previous_version(project_root(), run))
        out["validation"] = {"success": True, "expectations": len(report.outcomes), "data_docs": report.data_docs, "notes": report.notes}
    finally:
        if not args.json:
            for name, c in summary.sources.items():
                print(f"{name}: rows_in {c.rows_in} = kept {c.kept} + quarantined {c.quarantined} + duplicates {c.duplicates}")
    print(json.dumps(out, default=str))
    return 0


def cmd_data_add(args: argparse.Namespace) -> int:
    """Hand files in: validated, versioned as batches of a new data version; retraining is announced, not run here."""
    api = _command_api()
    args.overrides = [x for x in args.files if "=" in x and not Path(x).exists()]
    args.files = [x for x in args.files if x not in args.overrides]
    params = _params(args)
    from lmops.env import project_root
    from lmops.flows.arrival import add_data

    files = [Path(f).resolve() for f in args.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        from lmops.errors import UserError

        raise UserError(f"no such file: {', '.join(missing)}")
    if api:
        api.ready()
    out = add_data(params=params.to_dict(), project_root=str(project_root()), files=[(str(f), args.role) for f in files])

    def text(o):
        if o["status"] == "known":
            return "nothing added: every file is already a batch of the current data (same bytes)"
        lines = [f"new data version {o['md5']}"]
        for bid, c in o["batches"].items():
            lines.append(f"  {c['file']} (batch {bid}, {c['role']}): rows_in {c['rows_in']} = kept {c['kept']} + quarantined "
                         f"{c['quarantined']} + duplicates {c['duplicates']}")
        lines.append(f"  {o['reason']}")
        lines.append("  the retraining deployment (lmops serve) starts on the event lmops.data.version.created" if o["retrain"] else "")
        return "\n".join(line for line in lines if line)

    _emit(out, args.json, text)
    return 0


def cmd_data_versions(args: argparse.Namespace) -> int:
    from lmops.tasks.version import list_versions

    versions = list_versions()
    _emit(versions, args.json, lambda vs: "\n".join(f"{v['md5']}  {v['date']}  splits {v['splits']}  corpus {v['corpus_rows']}" for v in vs)
          or "no data versions yet; run `lmops run`")
    return 0


def cmd_data_checkout(args: argparse.Namespace) -> int:
    from lmops.env import project_root
    from lmops.tasks.version import checkout

    md5 = checkout(project_root(), args.version)
    _emit({"data_version": md5, "path": str(project_root() / "data")}, args.json, lambda o: f"data/ is now {o['data_version']}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Tokenize + pretrain. Re-running the same command resumes from the last checkpoint; works under
    ``torchrun --nproc_per_node N -m lmops.cli pretrain`` (DDP)."""
    params = _params(args)
    import torch

    from lmops.env import runs_dir
    from lmops.tasks import stages
    from lmops.tasks.distributed import dist_setup

    rank, world, _ = dist_setup()
    data = _snapshot(params) if rank == 0 else None
    if world > 1:
        box = [str(data.dir) if data else None]
        torch.distributed.broadcast_object_list(box, src=0)
        data = Snapshot(Path(box[0]))
    # The same data and params map to the same folder, so the same command resumes.
    run = RunLayout(Path(args.out).resolve() if args.out else runs_dir() / f"pretrain-{stages.pretrain_key(params, data)}")
    if rank == 0:
        tok = stages.tokenize(params, data, run.stage("tokenize"))
    if world > 1:
        torch.distributed.barrier()
        if rank != 0:
            tok = stages.tokenize(params, data, run.stage("tokenize"))
    from contextlib import nullcontext

    from lmops.tasks.checkpoints import claim

    # rank 0 owns the folder for the whole job; the other ranks wait for it at the barrier
    with claim(run.stage("pretrain") / "checkpoints") if rank == 0 else nullcontext():
        if world > 1:
            torch.distributed.barrier()
        s = stages.pretrain(params, tok, run.stage("pretrain"))
    out = dict(s.__dict__)
    out["rank"] = rank
    # Under torchrun every rank writes to the same stdout: one write() per line keeps two ranks' lines from
    # interleaving (print() writes the text and the newline separately).
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), (json.dumps(out, default=str) + "\n").encode())
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Search params for the best validation score (Optuna), each trial a nested MLflow run; best params as a layer."""
    params = _params(args)
    from lmops.config import load_params
    from lmops.env import project_root, runs_dir
    from lmops.models import resolve_model_ref
    from lmops.tasks import stages
    from lmops.tasks.sweep import check_space, load_spec, run_sweep, set_metric

    spec = load_spec(Path(args.space))

    def load(extra: list[str]):
        return load_params(project_root() / "params.yaml", overrides=[*args.overrides, *extra], layers=args.params or None)

    check_space(spec, load)
    data = _snapshot(params)
    out = Path(args.out) if args.out else runs_dir() / f"sweep-{spec.name}"  # the same name continues the same study
    sets = stages.sweep_sets(params, spec, data, out / "sets", project_root())

    def train(p, out: Path, on_epoch):
        if p.finetune.base_model:
            base = resolve_model_ref(p.finetune.base_model)
        else:  # pretrain params may be searched too; the stage cache reuses a pretraining the trials share
            base = stages.pretrain(p, stages.tokenize(p, data, out / "tokenize"), out / "pretrain").model_dir
        return stages.finetune(p, data, base, out / "finetune", on_epoch=on_epoch)

    def score_sets(p, s, out: Path) -> dict[str, float]:
        metric = set_metric(spec.objective)
        return {name: stages.evaluate(p, s.model_dir, rows, out / name, f"Sweep trial on {name}").headline()[metric]
                for name, rows in sets.items()}

    r = run_sweep(spec, load, data, out, train, params.register_.experiment, params.project.seed, progress=not args.json,
                  score_sets=score_sets)
    _emit(r.to_dict(), args.json, lambda o: Path(o["report"]).read_text())
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    params = _params(args)
    from lmops.errors import UserError
    from lmops.models import resolve_model_ref
    from lmops.tasks import stages

    base = args.base or params.finetune.base_model
    if not base:
        raise UserError("no base model: pass --base PATH (e.g. a pretrain run's model/) or set finetune.base_model")
    data = _snapshot(params)
    run = RunLayout(new_run_dir("finetune"))
    s = stages.finetune(params, data, resolve_model_ref(base), run.stage("finetune"))
    out = {k: v for k, v in s.__dict__.items() if k != "history"}
    if args.compare_base:
        out["compare"] = stages.compare_bases(params, data, run, s.model_dir, args.compare_base)
    print(json.dumps(out, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model folder or a registry reference on the test split or a labeled file.

    A classifier gets the classification (or NER) report; a pretrained language model gets its held-out
    perplexity on the texts (the test split's, or --data FILE: any CSV/JSONL/Parquet with a text column).
    """
    params = _params(args)
    from lmops.tasks import stages
    from lmops.tasks.evaluate import evaluate_language_model, language_model_objective, load_labeled_file, load_text_file

    run = RunLayout(new_run_dir("evaluate"))
    model_dir = _model_dir(args.model, run.root)
    title = f"{args.model} on {args.data or 'the test split'}"
    lm = language_model_objective(model_dir)
    if not lm:  # scored as what it is (its task, labels and reading length), whatever the current params train
        params = stages.for_model(params, model_dir)
    counts = None
    if args.data:  # a user's file, through the ingest rules: every row kept, quarantined (with its reason) or a duplicate
        data, counts = (load_text_file(Path(args.data), run.stage("data")) if lm
                        else load_labeled_file(Path(args.data), params, run.stage("data"), params.evaluate.file_columns())[:2])
        if not args.json:
            print(f"{args.data}: rows_in {counts.rows_in} = kept {counts.kept} + quarantined {counts.quarantined} + duplicates {counts.duplicates}"
                  + (f" (reasons: {run.stage('data') / 'quarantine.parquet'})" if counts.quarantined else ""))
    else:
        data = _snapshot(params).test
    rows = {"data_rows": counts.__dict__} if counts else {}
    if lm:
        r = evaluate_language_model(model_dir, data, args.block_size or params.tokenize.block_size, params.evaluate.batch_size, run.stage("evaluate"),
                                    seed=params.project.seed, mlm_probability=params.pretrain.mlm_probability, title=title)
        if not args.json:
            print((run.stage("evaluate") / "report.md").read_text())
        print(json.dumps(r | rows))
        return 0
    r = stages.evaluate(params, model_dir, data, run.stage("evaluate"), title)
    read_as = {"task": params.finetune.task, "labels": params.validate_.labels, "max_length": stages.reading_length(params, model_dir)}
    if not args.json:
        print(Path(r.report_path).read_text())
    print(json.dumps({k: v for k, v in r.__dict__.items() if k != "report"} | {"per_class": r.report["per_class"], "read_as": read_as} | rows,
                     default=str))
    return 0


def _model_dir(ref: str, run: Path) -> Path:
    """A folder path as is; ``NAME@ALIAS`` / ``NAME@VERSION`` downloaded from the registry."""
    from lmops.tasks.stages import model_folder

    return model_folder(ref, run / "model")


def cmd_monitor(args: argparse.Namespace) -> int:
    """Score text with the champion (``score``) or refresh the analysis and the page (``dashboard``): flows/monitor.py."""
    api = _command_api()
    params = _params(args)
    from lmops.env import project_root
    from lmops.errors import UserError

    inputs = [Path(i).resolve() for i in getattr(args, "input", None) or []]
    missing = [str(i) for i in inputs if not i.exists()]
    if missing:
        raise UserError(f"no such file or folder: {', '.join(missing)}")
    from lmops.flows.monitor import monitor

    if api:
        api.ready()
    out = monitor(params=params.to_dict(), project_root=str(project_root()), inputs=[str(i) for i in inputs])

    def text(o):
        lines = []
        s = o["scoring"]
        if s:
            for f, c in s["files"].items():
                lines.append(f"{f}: rows_in {c['rows_in']} = scored {c['scored']} + quarantined {c['quarantined']} + duplicates {c['duplicates']}")
            if s["quarantined"]:
                lines.append(f"  quarantined rows with their reasons: {s['quarantine']}")
        lines.append(f"model: {o['model']} v{o['version']} (alias {o['alias']}); store: {o['totals']['documents']} documents, "
                     f"{o['totals']['entities']} companies")
        lines += [f"SPIKE {x['entity']}: z {x['z']:+.1f} (mean {x['mean']:+.3f} vs {x['baseline']:+.3f}, {x['volume']} docs)" for x in o["new_spikes"]]
        lines.append(("DRIFT: " if o["drift"]["drifted"] else "") + o["drift"]["verdict"])
        lines.append(f"dashboard: {o['dashboard']}")
        return "\n".join(lines)

    _emit(out, args.json, text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """An ONNX Runtime copy of a registered classifier, checked on its test split and recorded with the version."""
    params = _params(args)
    from lmops.env import project_root
    from lmops.tasks.monitor.export import export

    run = RunLayout(new_run_dir("export"))
    out = export(args.ref, project_root(), params, Path(args.data) if args.data else None, run.root)
    _emit(out, args.json, lambda o: f"{o['model']} v{o['version']} → {o['runtime']} {o['precision']} ({o['size_mb']} MB): test macro-F1 {o['macro_f1_exported']:.4f} "
          f"against {o['macro_f1_original']:.4f} ({o['delta_points']:+.2f} points, limit ±{o['max_delta_points']}), "
          f"{o['agreement']:.1%} identical predictions on {o['test_rows']} rows; recorded as {o['artifact']}; "
          f"score with it: monitor.runtime={o['runtime']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the pipeline unattended until interrupted: nightly, on new data, and the landing folder (flows/serve.py)."""
    from lmops.env import project_root
    from lmops.errors import UserError

    params = _params(args)  # validated here, so a bad layer or override fails now, not at 2 a.m.
    if not os.environ.get("PREFECT_API_URL"):
        raise UserError("no Prefect server: the embedded API has no scheduler, so nothing would run. Start one with "
                        "`lmops server start` (or export PREFECT_API_URL=http://HOST:4200/api), then run `lmops serve` again")
    from lmops.flows.serve import serve

    root = project_root()
    layers = [str(Path(layer).resolve().relative_to(root)) if Path(layer).resolve().is_relative_to(root) else str(Path(layer).resolve())
              for layer in args.params or []]
    serve(params, root, args.name, args.cron or params.schedule.cron, layers, args.overrides)
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from lmops.flows import server

    if args.server_command == "start":
        st = server.start(prefect_port=args.prefect_port, mlflow_port=args.mlflow_port)
    elif args.server_command == "stop":
        st = server.stop()
    else:
        st = server.status()

    def text(o):
        if not any(s["running"] for s in o.values()):
            return "control plane stopped (lmops commands use the embedded Prefect API); start it with `lmops server start`"
        lines = [f"{name}: {'running' if s['running'] else 'NOT running'}" + (f" at {s['url']} (pid {s['pid']}, log {s['log']})" if s.get("url") else "")
                 for name, s in o.items()]
        if o["prefect"]["running"]:
            lines += [f"Prefect UI  {o['prefect']['url']}", f"MLflow UI   {o['mlflow'].get('url', '-')}",
                      f"lmops commands here now use it; elsewhere: export PREFECT_API_URL={o['prefect']['api_url']}"]
        return "\n".join(lines)

    _emit(st, args.json, text)
    running = all(s["running"] for s in st.values())
    return 0 if (running or args.server_command == "stop") else 1


def cmd_models_list(args: argparse.Namespace) -> int:
    from lmops.tasks.registry import list_models

    models = list_models()

    def text(ms):
        if not ms:
            return "no registered models yet; run `lmops run`"
        return "\n".join(f"{m['name']}: {m['versions']} version(s), aliases {m['aliases']}" for m in ms)

    _emit(models, args.json, text)
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    from lmops.tasks.registry import show

    info = show(args.ref)
    _emit(info, args.json, lambda o: "\n".join(f"{k}: {v}" for k, v in o.items() if k != "tags"))
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    from lmops.tasks.registry import verify

    rows = verify(args.name)
    bad = [r for r in rows if not r["ok"]]
    _emit({"checked": len(rows), "broken": bad}, args.json, lambda o: f"checked {o['checked']} version(s); "
          + ("all artifacts present" if not o["broken"] else "BROKEN: " + "; ".join(f"{r['name']} v{r['version']} missing {r['missing'] or r['error']}" for r in o["broken"])))
    return 0 if not bad else 5


def cmd_runs_prune(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lmops.env import runs_dir
    from lmops.tasks.retention import prune_runs

    r = prune_runs(runs_dir(), keep=args.keep, min_age_days=args.min_age_days, dry_run=args.dry_run)
    _emit(asdict(r), args.json, lambda o: f"{'would remove' if o['dry_run'] else 'removed'} {len(o['removed'])} run folder(s), "
          f"{o['freed_bytes'] / 1e6:.1f} MB; kept {len(o['kept'])}" + "".join(f"\n  kept {k}: {v}" for k, v in o["kept"].items() if "registry" in v))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from lmops.env import project_root
    from lmops.tasks import audit

    if args.restore:
        out = audit.restore(args.ref, Path(args.restore), project_root())
        _emit(out, args.json, lambda o: f"restored into {o['restored']}: data {o['data_version']}, params {o['params']}, code {o['code']}")
        return 0
    lin = audit.lineage(args.ref)
    _emit(lin, args.json, audit.to_text)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from lmops.tasks.registry import set_champion

    event = set_champion(args.name, str(args.version), "promote (manual)", args.reason, force=args.force)
    _emit(event, args.json, lambda e: f"{args.name}@champion: v{e['from_version']} → v{e['to_version']} ({e['who']}, {e['when']})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from lmops.tasks.registry import rollback

    event = rollback(args.name, args.reason)
    _emit(event, args.json, lambda e: f"{args.name}@champion rolled back: v{e['from_version']} → v{e['to_version']} ({e['who']}, {e['when']})")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """Teach one teacher, or an ensemble of several, to a student with fewer layers (``distill`` params); the student
    and every teacher scored on the same test split (report.md). The student is a model folder (``lmops compare``,
    ``lmops evaluate``)."""
    params = _params(args)
    from lmops.tasks import stages

    run = RunLayout(new_run_dir("distill"))
    teachers = [_model_dir(ref, run.root / f"teacher-{i}") for i, ref in enumerate(args.teacher)]
    out = stages.distill(params, teachers, _snapshot(params), run.stage("distill"), names=list(args.teacher))
    _emit(out, args.json, lambda o: Path(o["report"]).read_text() + f"\nstudent: {o['summary']['model_dir']}")
    return 0


def cmd_soup(args: argparse.Namespace) -> int:
    """Average fine-tuned models of one start (``--member``, plus ``soup.members``) into one model (``soup`` params);
    the soup, every member and their ensemble scored on the same test split (report.md). The soup is a model folder
    (``lmops compare``, ``lmops evaluate``)."""
    params = _params(args)
    from lmops.tasks import stages

    run = RunLayout(new_run_dir("soup"))
    refs = [*(args.member or []), *params.soup.members]
    members = [_model_dir(ref, run.root / f"member-{i}") for i, ref in enumerate(refs)]
    if args.sweep:  # a sweep's trials start from one model (one project.seed): Wortsman et al.'s soup of hyperparameters
        from lmops.tasks.sweep import trial_models

        found = trial_models(Path(args.sweep))
        members += found
        refs += [str(f.relative_to(args.sweep).parts[0]) for f in found]
    params = stages.for_model(params, members[0]) if members else params
    out = stages.soup(params, members, _snapshot(params), run.stage("soup"), names=refs)
    _emit(out, args.json, lambda o: Path(o["report"]).read_text() + f"\nsoup: {o['summary']['model_dir']}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Two models side by side: registered versions' params, lineage and recorded metrics, and both scored now on
    the same rows (the test split or --data FILE) with the paired-bootstrap interval of the difference."""
    if args.second and "=" in args.second and not Path(args.second).exists():  # an override where the optional ref goes
        args.overrides.insert(0, args.second)
        args.second = None
    params = _params(args)
    a_ref, b_ref = (args.first, args.second) if args.second else (f"{params.register_.model_name}@champion", args.first)
    out: dict = {}
    # A and B may each name several runs of one recipe (other seeds), comma-separated
    runs = [ref.split(",") if "," in ref and not Path(ref).exists() else [ref] for ref in (a_ref, b_ref)]
    if not Path(a_ref).exists() and not Path(b_ref).exists() and all(len(r) == 1 for r in runs):
        from lmops.tasks.registry import compare

        out = compare(a_ref, b_ref)
    if not args.no_score:
        from lmops.tasks import stages
        from lmops.tasks.evaluate import load_labeled_file

        run = RunLayout(new_run_dir("compare"))
        a, b = ([_model_dir(r, run.root / f"{side}{i}") for i, r in enumerate(refs)] for side, refs in zip("ab", runs))
        params = stages.for_model(params, a[0])  # both sides scored as A is (a B of another task is an error naming it)
        data = load_labeled_file(Path(args.data), params, run.stage("data"), params.evaluate.file_columns())[0] if args.data else _snapshot(params).test
        out["scored"] = stages.compare_models(params, a, b, data, run.stage("compare"), names=(a_ref, b_ref))

    def text(o):
        rows = []
        if "metrics" in o:
            rows = [f"{'':32} {o['a']:>22} {o['b']:>22}"]
            rows += [f"{k:32} {str(a):>22} {str(b):>22}" for k, (a, b) in o["metrics"].items()]
            rows += ["lineage:"] + [f"  {k:30} {str(a)[:22]:>22} {str(b)[:22]:>22}" for k, (a, b) in o["lineage"].items()]
            rows += ["params that differ:"] + [f"  {k:30} {str(a)[:22]:>22} {str(b)[:22]:>22}" for k, (a, b) in o["params_changed"].items()]
        if "scored" in o:
            rows += ["", Path(o["scored"]["report"]).read_text()]
        return "\n".join(rows)

    _emit(out, args.json, text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmops", description="Orchestrated MLOps pipeline for self-supervised NLP.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_params(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--params", type=Path, action="append", help="a YAML file layered over params.yaml (repeatable, later wins)")
        p.add_argument("overrides", nargs="*", metavar="key.path=value", help="single-value overrides, e.g. pretrain.max_steps=50")
        p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
        return p

    data = sub.add_parser("data", help="the data layer").add_subparsers(dest="data_command", required=True)
    with_params(data.add_parser("ingest", help="ingest + validate the sources in params (no training)")).set_defaults(func=cmd_data_ingest)
    p = data.add_parser("add", help="hand new files in (CSV/TSV/JSONL/Parquet/TXT): validated, then a new data version whose "
                                    "event triggers retraining under `lmops serve`")
    p.add_argument("--params", type=Path, action="append", help="a YAML file layered over params.yaml (repeatable, later wins)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("files", nargs="+", metavar="FILE", help="files to add (key.path=value items among them are param overrides)")
    p.add_argument("--role", choices=["labeled", "unlabeled"], default="labeled",
                   help="labeled: text + label columns (arrival.text_column/label_column); unlabeled: domain text for pretraining")
    p.set_defaults(func=cmd_data_add)
    p = data.add_parser("versions", help="data snapshots with dates and row counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_versions)
    p = data.add_parser("checkout", help="restore data/ to a snapshot (md5 or unique prefix)")
    p.add_argument("version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_checkout)
    p = with_params(sub.add_parser("pretrain", help="tokenize + pretrain on the current snapshot (resumable; torchrun-ready)"))
    p.add_argument("--out", help="output folder (default: one per data+params, so re-running resumes)")
    p.set_defaults(func=cmd_pretrain)
    p = with_params(sub.add_parser("sweep", help="search params (a YAML space over tokenize/pretrain/finetune) for the best validation "
                                                 "score with Optuna: pruning, a time budget, each trial a nested MLflow run, the best "
                                                 "params written as a layer for `lmops run --params`"))
    p.add_argument("--space", required=True, help="the sweep file: name, objective, trials, time_budget_s, pruning, space")
    p.add_argument("--out", help="the sweep folder (default: LMOPS_HOME/runs/sweep-NAME; the same folder continues the study)")
    p.set_defaults(func=cmd_sweep)
    p = with_params(sub.add_parser("finetune", help="fine-tune a classifier or tagger (finetune.task) on the current snapshot"))
    p.add_argument("--base", help="base model: folder, pkg:NAME or hub id (default: finetune.base_model)")
    p.add_argument("--compare-base", metavar="GENERIC", help="also fine-tune from this generic base and report the test-set "
                   "difference (domain − generic) with a bootstrap 95%% interval: does domain pretraining pay?")
    p.set_defaults(func=cmd_finetune)
    p = with_params(sub.add_parser("evaluate", help="evaluate MODEL (folder or NAME@ALIAS) on the test split or --data FILE "
                                                    "(classifiers: report; language models: perplexity)"))
    p.add_argument("--block-size", type=int, default=None, help="language models: tokens per block (default tokenize.block_size)")
    p.add_argument("model")
    p.add_argument("--data", help="a labeled CSV/TSV/JSONL/Parquet file (text,label; CoNLL for NER; SEntFiN columns for entity "
                   "sentiment), or any text for a language model, ingested with the same rules; other columns and label names: "
                   "evaluate.text_column, evaluate.label_column, evaluate.label_map, evaluate.format")
    p.set_defaults(func=cmd_evaluate)

    mon = sub.add_parser("monitor", help="finance sentiment monitoring with the champion").add_subparsers(dest="monitor_command", required=True)
    p = with_params(mon.add_parser("score", help="score unlabeled text (CSV/TSV/JSONL/Parquet: text, timestamp, optional id/source); "
                                                 "aggregates, spikes, drift and the dashboard are updated"))
    p.add_argument("--input", action="append", required=True, metavar="FILE|DIR", help="a file or a folder of files (repeatable)")
    p.set_defaults(func=cmd_monitor)
    p = with_params(mon.add_parser("dashboard", help="recompute spikes and drift from the store and regenerate the dashboard page"))
    p.set_defaults(func=cmd_monitor)

    p = with_params(sub.add_parser("export", help="NAME@ALIAS as ONNX Runtime for fast CPU scoring, checked on its test split "
                                                  "(monitor.export_max_delta) and recorded with the version"))
    p.add_argument("ref", help="NAME, NAME@ALIAS or NAME@VERSION")
    p.add_argument("--data", help="a labeled file to check on instead of the version's test split")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="serve the pipeline as a scheduled Prefect deployment (needs a Prefect server: lmops server start)")
    p.add_argument("--cron", default=None, help="override schedule.cron from params")
    p.add_argument("--name", default="nightly")
    p.add_argument("--params", type=Path, action="append", help="a YAML file layered over params.yaml (repeatable, later wins)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("init", help="create local state and the DVC repo with its default remote")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_init)
    p = with_params(sub.add_parser("run", help="run the whole pipeline"))
    p.add_argument("--data", metavar="DIR", help="train on this data snapshot (a versioned data/ folder, e.g. restored by "
                   "`lmops audit --restore`) instead of ingesting the sources in params")
    p.set_defaults(func=cmd_run)

    srv = sub.add_parser("server", help="a local control plane: Prefect server + MLflow UI on 127.0.0.1, state under LMOPS_HOME")
    srv_sub = srv.add_subparsers(dest="server_command", required=True)
    for name, text in (("start", "start what is not running and print the UI URLs"), ("stop", "stop it"), ("status", "what is running")):
        p = srv_sub.add_parser(name, help=text)
        if name == "start":
            p.add_argument("--prefect-port", type=int, default=4200)
            p.add_argument("--mlflow-port", type=int, default=5000)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_server)
    runs = sub.add_parser("runs", help="run folders under LMOPS_HOME/runs").add_subparsers(dest="runs_command", required=True)
    p = runs.add_parser("prune", help="remove old run folders; never the newest, the recent or those the registry's aliases point to")
    p.add_argument("--keep", type=int, default=10, help="always keep this many newest runs (default 10)")
    p.add_argument("--min-age-days", type=float, default=7.0, help="never remove a run younger than this (default 7)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs_prune)
    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="models_command", required=True)
    p = models.add_parser("list", help="registered models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("show", help="one version: NAME, NAME@ALIAS or NAME@VERSION")
    p.add_argument("ref")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_show)
    p = models.add_parser("verify", help="check every registered version's artifacts are present")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_verify)

    p = sub.add_parser("audit", help="full lineage of NAME@VERSION; --restore DIR rebuilds its data, params and code")
    p.add_argument("ref")
    p.add_argument("--restore", metavar="DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("promote", help="make VERSION the champion (recorded with who/when/why)")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--reason", required=True)
    p.add_argument("--force", action="store_true", help="promote a version that failed its gate (the override is recorded)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("rollback", help="restore the previous champion (recorded with who/when/why)")
    p.add_argument("name")
    p.add_argument("--reason", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rollback)
    p = with_params(sub.add_parser("distill", help="teach --teacher MODEL (repeat it for an ensemble) to a student with fewer layers; "
                                                   "both scored on the test split"))
    p.add_argument("--teacher", action="append", required=True, metavar="MODEL", help="a model folder or NAME@ALIAS; several = an ensemble")
    p.set_defaults(func=cmd_distill)
    p = with_params(sub.add_parser("soup", help="average --member MODEL (repeat it; fine-tuned from one start, finetune.init_seed) into one "
                                                "model (soup.method uniform or greedy); the soup, the members and their ensemble scored on the "
                                                "test split"))
    p.add_argument("--member", action="append", metavar="MODEL", help="a model folder or NAME@ALIAS|@VERSION (with soup.members: two or more)")
    p.add_argument("--sweep", metavar="DIR", help="also every model a `lmops sweep` saved in DIR (its --out folder); with soup.method=greedy "
                                                  "the trials that lower the soup's validation score are left out")
    p.set_defaults(func=cmd_soup)

    p = sub.add_parser("compare", help="A [B]: B − A (one model: it − the champion) scored now on the same rows, with a paired-bootstrap "
                                       "95%% interval and whether it is distinguishable from noise; registered versions' params, "
                                       "lineage and recorded metrics side by side")
    p.add_argument("first", metavar="A", help="model folder or NAME@ALIAS / NAME@VERSION; several runs of one recipe (seeds) "
                                              "comma-separated: each side is then their mean, and the interval resamples the runs too")
    p.add_argument("second", metavar="B", nargs="?", help="the same (default: A is compared with register.model_name@champion)")
    with_params(p)
    p.add_argument("--data", help="a labeled CSV/TSV/JSONL/Parquet file, ingested with the same rules (default: the test split)")
    p.add_argument("--no-score", action="store_true", help="only the recorded params, lineage and metrics (no scoring)")
    p.set_defaults(func=cmd_compare)
    return parser


def _positional_before_overrides(args: argparse.Namespace) -> None:
    """argparse fills ``overrides`` (nargs=*) before a later single positional, so ``lmops evaluate MODEL k=v`` arrives
    as overrides [MODEL], model "k=v": put the one item that is not a ``key=value`` back in its place."""
    for name in ("model", "ref"):
        value = getattr(args, name, None)
        if not isinstance(value, str) or not getattr(args, "overrides", None):
            continue
        items = [*args.overrides, value]
        plain = [x for x in items if "=" not in x or Path(x).exists()]
        if len(plain) == 1:
            setattr(args, name, plain[0])
            args.overrides = [x for x in items if x is not plain[0]]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse takes no positional after an option once the positionals are filled, so overrides written after
    # the options (`lmops evaluate MODEL --data F k=v`) come back unparsed: they are overrides all the same
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _positional_before_overrides(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from lmops.env import ensure_home

    try:
        ensure_home()
        return args.func(args)
    except LmopsError as exc:
        print(f"lmops: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - a flow failure surfaces as its original exception
        cause = exc
        while cause.__cause__ is not None and not isinstance(cause, LmopsError):
            cause = cause.__cause__
        if isinstance(cause, LmopsError):
            print(f"lmops: error: {cause}", file=sys.stderr)
            return cause.exit_code
        print(f"lmops: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
