"""One function per pipeline stage: params and a run folder in, a small typed summary out.

The Prefect flow (``flows/pipeline.py``) and the CLI (``lmops/cli.py``) call these and nothing below
them, so a stage behaves the same whichever way it runs. No Prefect here: artifacts, retries and
events are the flow's business.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmops.config import Params
from lmops.layout import RunLayout, Snapshot


def _reuse(p: Params, stage: str, inputs: dict, out: Path, compute, load):
    """``compute()`` unless an earlier run computed this stage from the same inputs (``tasks/stagecache.py``)."""
    from lmops.tasks import stagecache

    if not p.cache.enabled:
        return compute()
    summary, reused = stagecache.reuse(stage, stagecache.stage_key(stage, inputs), out, compute, load, p.cache.max_gb)
    if reused:
        (out / "REUSED.json").write_text(json.dumps({"stage": stage, "key": reused.key, "origin": reused.origin}))
        # stderr: stdout is the command's result (one JSON line with --json), which a cache hit must not break
        print(f"{stage}: inputs unchanged since {reused.origin}; its result is reused (cache key {reused.key})", file=sys.stderr)
    return summary


def reused(run: RunLayout) -> list[str]:
    """The stages of ``run`` whose results came from an earlier run."""
    return sorted({json.loads(f.read_text())["stage"] for f in run.root.rglob("REUSED.json")})


def ingest(p: Params, run: RunLayout, carry_from: Snapshot | None = None):
    """Read, normalize, quarantine and split the sources in params, and the batches handed in since (those of
    ``carry_from``, the current ``data/``, and any already in ``run.data``), into ``run.data``."""
    from lmops.tasks import arrival
    from lmops.tasks.ingest import IngestSummary
    from lmops.tasks.ingest import ingest as ingest_sources
    from lmops.tasks.stagecache import tree_digest
    from lmops.tasks.version import BATCHES

    if carry_from is not None:
        arrival.carry(carry_from, run.data)
    batch_sources = arrival.sources(run.data)

    def compute():
        params = p.ingest.model_copy(update={"sources": [*p.ingest.sources, *batch_sources]})
        return ingest_sources(params, p.validate_.labels, run.data.dir, p.ingest.seed_for_split(p.project.seed), p.finetune.kind)

    paths = [Path(s.path) for s in p.ingest.sources]
    if any(s.format == "hf" for s in p.ingest.sources) or not all(path.exists() for path in paths):
        return compute()  # a hub dataset has no local bytes to key on; a missing path fails with its own message
    inputs = {"ingest": p.ingest.content(), "labels": p.validate_.labels, "seed": p.ingest.seed_for_split(p.project.seed), "task": p.finetune.task,
              "sources": [tree_digest(path) for path in paths],
              "batches": tree_digest(run.data.dir / BATCHES) if batch_sources else None}
    return _reuse(p, "ingest", inputs, run.data.dir, compute, lambda d: IngestSummary.read(run.data.dir))


def intake(p: Params, run: RunLayout, root: Path, files: list[tuple[Path, str]]) -> dict:
    """Hand files in: each file becomes a batch of ``run.data`` unless the same bytes already are one there or in the
    current data (whose batches :func:`ingest` carries in). Returns ``{"new": [...], "known": [...]}`` (batch dicts)."""
    from dataclasses import asdict

    from lmops.tasks import arrival

    out: dict[str, list] = {"new": [], "known": []}
    for path, role in files:
        batch, new = arrival.take(Path(path), role, p.arrival, run.data, known=Snapshot(root / "data"))
        out["new" if new else "known"].append({**asdict(batch), "path": str(path)})
    return out


def retrain_due(p: Params, root: Path, summary) -> dict:
    """Is there enough new labeled data to retrain? Labeled rows now minus those of the data version the newest
    registered model trained on (all rows count when there is none, or its snapshot is not in the DVC cache)."""
    from lmops.tasks import arrival, registry
    from lmops.tasks.version import cached_file

    now = arrival.labeled_rows(summary.to_dict())
    newest = registry.get_version(p.register_.model_name)
    trained_md5 = (newest.tags or {}).get("data_version") if newest else None
    before = cached_file(root, trained_md5, "summary.json") if trained_md5 else None
    trained = arrival.labeled_rows(json.loads(before.read_text())) if before else 0
    new_rows = max(0, now - trained)
    due = new_rows >= p.arrival.min_new_rows
    reason = (f"{new_rows} labeled rows new since " + (f"data version {trained_md5[:12]} (model v{newest.version})" if before else "no trained version")
              + (f" ≥ arrival.min_new_rows={p.arrival.min_new_rows}: retraining is due" if due
                 else f" < arrival.min_new_rows={p.arrival.min_new_rows}: no retraining yet (they count toward the next batch)"))
    return {"new_rows": new_rows, "retrain": due, "reason": reason}


def adopt(run: RunLayout, snapshot: Snapshot):
    """Take an existing snapshot (a restored ``data/``, one pushed from elsewhere) as this run's data instead of
    ingesting the sources: its files are copied unchanged, so its DVC md5, and the data version, stay the same."""
    from lmops.tasks.ingest import IngestSummary
    from lmops.tasks.version import copy_snapshot

    snapshot.require()
    copy_snapshot(snapshot.dir, run.data.dir)
    return IngestSummary.read(run.data.dir)


def current_data_version(root: Path) -> str | None:
    """The md5 ``data.dvc`` names, if ``data/`` holds exactly that version; else None."""
    from lmops.tasks.version import current_version_of

    return current_version_of(root, root / "data")


def unchanged(p: Params, run: RunLayout, root: Path):
    """The registered version this run would repeat, or None: ``run.data`` is byte for byte the current data version
    and a version of the model was trained on it with the same params (schedule, notify and cache aside) and the
    same code. A nightly run with nothing new records "no change" instead of registering a duplicate."""
    from lmops.tasks import registry
    from lmops.tasks.stagecache import code_version
    from lmops.tasks.version import current_version_of

    md5 = current_version_of(root, run.data.dir)
    if md5 is None:
        return None
    same = registry.find_version(p.register_.model_name, data_version=md5, model_params_hash=p.model_hash(), code_version=code_version())
    if same and not registry.promotion_settled(same["name"], same["version"]):
        print(f"{same['name']} v{same['version']} passed its gate but its promotion never happened (an interrupted run): running again", file=sys.stderr)
        return None
    if same:
        # nothing to train, but what serves must still be there: a champion whose files are gone fails as it would at the gate
        champion = registry.get_version(same["name"], registry.CHAMPION)
        for mv in {str(v.version): v for v in (champion, registry.get_version(same["name"], str(same["version"]))) if v}.values():
            registry.require_artifacts(mv)
    return same


def previous_version(root: Path, run: RunLayout) -> Snapshot | None:
    """The data version this run would replace, for the label-drift check: ``data/`` when it is there; on a fresh
    clone (``data.dvc`` but no ``data/``, a worker's checkout) its ``summary.json`` alone, read from the DVC cache or
    remote; None when there is no previous version or the remote cannot be read (the report then says so)."""
    current = Snapshot(root / "data")
    if current.summary.is_file() or not (root / "data.dvc").is_file():
        return current
    import dvc.api

    try:
        text = dvc.api.read("data/summary.json", repo=str(root))
    except Exception as exc:  # noqa: BLE001 - no remote, unreachable, pruned: drift cannot be checked, validation goes on
        print(f"label drift: the previous data version's summary could not be read from the DVC remote ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    folder = run.root / "previous-data"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(text)
    return Snapshot(folder)


def validate(p: Params, run: RunLayout, previous: Snapshot | None):
    """Great Expectations over ``run.data``; ``previous`` is the data version it would replace (label drift)."""
    from lmops.tasks.validate import validate_snapshot

    return validate_snapshot(run.data.dir, p.validate_, run.validate, p.finetune.kind, previous_dir=previous.dir if previous else None,
                             engine=p.ingest.engine)


def version(run: RunLayout, root: Path):
    """``run.data`` becomes ``root/data``, tracked by ``data.dvc`` and pushed to the DVC remote."""
    from lmops.env import dvc_remote_dir
    from lmops.tasks.version import snapshot

    return snapshot(root, run.data.dir, dvc_remote_dir())


def tokenize(p: Params, data: Snapshot, out: Path):
    from lmops.tasks.tokenize import tokenize_corpus

    return tokenize_corpus(data.corpus, p.tokenize, p.pretrain.objective, p.pretrain.base_model, out)


def pretrain_key(p: Params, data: Snapshot) -> str:
    """Identifies a pretraining by its inputs (corpus bytes, tokenizer and pretraining params, seed): the same
    inputs resume the same checkpoints, from the flow and from ``lmops pretrain`` alike."""
    from lmops.tasks.checkpoints import resume_key
    from lmops.tasks.tokenize import cache_key

    return resume_key(cache_key(data.corpus, p.tokenize, p.pretrain.objective, p.pretrain.base_model), p.pretrain, p.project.seed)


def pretrain(p: Params, tok, out: Path, checkpoint_dir: Path | None = None):
    import os

    from lmops.tasks.pretrain import PretrainSummary
    from lmops.tasks.pretrain import pretrain as train_lm

    def compute():
        from lmops.tasks.checkpoints import mirrored, resume_key

        ckpt = checkpoint_dir or out / "checkpoints"
        push, finished = mirrored(p.cache.checkpoint_url, resume_key(tok.cache_key, p.pretrain, p.project.seed), ckpt, p.pretrain.keep_checkpoints)
        if os.environ.get("WORLD_SIZE", "1") != "1" and p.cache.checkpoint_url:
            import torch

            torch.distributed.barrier()  # rank 0 has pulled the mirrored checkpoint before any rank resumes
        s = train_lm(Path(tok.blocks_path), Path(tok.tokenizer_dir), p.pretrain, p.project.seed, out, checkpoint_dir=ckpt, on_checkpoint=push)
        if int(os.environ.get("RANK", "0")) == 0:
            finished()
        return s

    if os.environ.get("WORLD_SIZE", "1") != "1":
        return compute()  # under torchrun every rank must take the same path; the ranks train together
    # tok.cache_key already hashes the corpus bytes, the tokenizer settings, the objective and the base model
    inputs = {"tokenize": tok.cache_key, "pretrain": p.pretrain, "seed": p.project.seed}
    return _reuse(p, "pretrain", inputs, out, compute, lambda d: PretrainSummary(**d))


def finetune(p: Params, data: Snapshot, base: str, out: Path, on_epoch=None):
    from lmops.tasks.finetune import FinetuneSummary
    from lmops.tasks.finetune import finetune as train_head
    from lmops.tasks.stagecache import file_digest, model_identity

    def compute():
        return train_head(data.train, data.validation, base, p.validate_.labels, p.finetune, p.project.seed, out, on_epoch=on_epoch)

    inputs = {"train": file_digest(data.train), "validation": file_digest(data.validation), "base": model_identity(base),
              "labels": p.validate_.labels, "finetune": p.finetune, "seed": p.project.seed}
    if p.finetune.entity_auxiliary != "none" and data.auxiliary.is_file():
        inputs["auxiliary"] = file_digest(data.auxiliary)
    return _reuse(p, "finetune", inputs, out, compute, lambda d: FinetuneSummary(**{**d, "base_model": base}))


def distill_candidate(p: Params, data: Snapshot, teacher, out: Path):
    """The pipeline's distillation: ``teacher`` (the fine-tune stage's summary) and ``distill.teachers`` teach a
    student; returns the student as a fine-tune summary, the candidate from here on."""
    from lmops.tasks.distill import DistillSummary
    from lmops.tasks.distill import distill as run_distill
    from lmops.tasks.stagecache import file_digest, model_identity

    teachers = [teacher.model_dir, *(str(model_folder(ref, out.parent / f"teacher-{i}")) for i, ref in enumerate(p.distill.teachers, start=1))]

    def compute():
        return run_distill(teachers, data.train, data.validation, data.corpus, p.validate_.labels, p.distill, p.finetune, p.project.seed, out)

    inputs = {"teachers": [model_identity(t) for t in teachers], "train": file_digest(data.train), "validation": file_digest(data.validation),
              "corpus": file_digest(data.corpus) if p.distill.unlabeled_rows else None, "labels": p.validate_.labels, "distill": p.distill,
              "finetune": p.finetune, "seed": p.project.seed}
    summary = _reuse(p, "distill", inputs, out, compute, lambda d: DistillSummary(**d))
    return summary.as_candidate(teacher)


def soup_candidate(p: Params, run: RunLayout, base: str, first):
    """The pipeline's soup: the fine-tune stage once more for each of ``soup.seeds`` (another project.seed, the same
    init_seed), those models, ``first`` (project.seed's) and ``soup.members`` averaged; returns the soup as a fine-tune
    summary, the candidate from here on. Each member's training is cached like the fine-tune stage's."""
    from lmops.tasks import seen
    from lmops.tasks.soup import SoupSummary
    from lmops.tasks.soup import soup as run_soup
    from lmops.tasks.stagecache import file_digest, model_identity

    trained = [first]
    for seed in p.soup.seeds:
        trained.append(finetune(p.model_copy(update={"project": p.project.model_copy(update={"seed": seed})}), run.data, base,
                                run.stage(f"finetune-seed-{seed}")))
    given = [str(model_folder(ref, run.root / f"soup-member-{i}")) for i, ref in enumerate(p.soup.members)]
    seen.require_held_out(given, run.data.test, "member", "soup")
    members = [m.model_dir for m in trained] + given
    out = run.stage("soup")

    def compute():
        return run_soup(members, run.data.validation, p.validate_.labels, p.finetune, p.soup.method, out)

    inputs = {"members": [model_identity(m) for m in members], "validation": file_digest(run.data.validation), "labels": p.validate_.labels,
              "soup": p.soup, "finetune": p.finetune}
    summary = _reuse(p, "soup", inputs, out, compute, lambda d: SoupSummary(**d))
    return summary.as_candidate(first, trained)


def soup(p: Params, members: list[Path], data: "Snapshot", out: Path, names: list[str] | None = None) -> dict:
    """Average ``members`` into a soup (``soup.method``); score the soup, every member and (one label per row) their
    ensemble on the same test rows (``out/report.md``, the soup − each of them with a paired-bootstrap interval).
    Returns the summary, each model's headline and the report's path."""
    from dataclasses import asdict

    from lmops.tasks import seen
    from lmops.tasks.soup import soup as run_soup

    names = names or [str(m) for m in members]
    seen.require_held_out(members, data.test, "member", "soup")
    summary = run_soup(members, data.validation, p.validate_.labels, p.finetune, p.soup.method, out / "soup")
    soup_eval = evaluate(p, summary.model_dir, data.test, out / "soup-eval", f"soup of {len(summary.used)} on the test split")
    rows = []
    for i, m in enumerate(members):
        res = evaluate(p, m, data.test, out / f"member-{i}-eval", f"{names[i]} on the test split")
        rows.append((names[i] + ("" if str(m) in summary.used else " (left out of the soup)"), res))
    if p.finetune.kind.calibrated:  # the several models the soup stands for: does one averaged model keep what they buy together?
        from lmops.tasks.evaluate import evaluate_ensemble

        rows.append((f"ensemble of the {len(members)} members", evaluate_ensemble(
            [(m, reading_length(p, m)) for m in members], data.test, p.validate_.labels, p.evaluate.batch_size, out / "ensemble-eval",
            p.finetune.kind, f"the ensemble of {len(members)} members on the test split")))
    metric = "macro_f1"
    lines = [f"# Soup ({summary.method}) of {len(summary.used)} of {len(members)} members", "",
             f"validation score: soup {summary.val_select}, members {', '.join(f'{v:.4f}' for v in summary.member_val)}"
             + (f" · started from {summary.start}" if summary.start else ""), *(f"note: {n}" for n in summary.notes), "",
             f"| model | {metric} (test) | 95% interval | soup − it | 95% interval of the difference |", "|---|---:|---|---:|---|",
             f"| soup | {soup_eval.headline()[metric]:.4f} | {_ci(soup_eval)} | | |"]
    against = {}
    for name, res in rows:
        d = _scores(p, soup_eval, res).diff[metric]
        against[name] = d
        lines.append(f"| {name} | {res.headline()[metric]:.4f} | {_ci(res)} | {d['diff']:+.4f} | [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"summary": asdict(summary), "soup": soup_eval.headline(), "models": {n: r.headline() for n, r in rows},
            "soup_minus": against, "report": str(out / "report.md")}


def model_folder(ref: str, dest: Path) -> Path:
    """A model folder (or ``pkg:`` reference) as is; a registry ``NAME@ALIAS|@VERSION`` downloaded to ``dest``."""
    if Path(ref).exists():
        return Path(ref)  # as it is: a soft-prompt model folder holds an adapter and its base, no config.json
    if ref.startswith("pkg:"):
        from lmops.models import resolve_model_ref

        return Path(resolve_model_ref(ref))
    from lmops.tasks import registry

    return registry.download_model(registry.show(ref)["source"], dest)


def reading_length(p: Params, model_dir: str | Path) -> int:
    """Tokens per input a model is scored with: evaluate.max_length if set, else as the model was trained."""
    from lmops.tasks.predict import saved_max_length

    return p.evaluate.max_length or saved_max_length(model_dir) or p.finetune.max_length


def for_model(p: Params, model_dir: str | Path) -> Params:
    """``p`` with the task and labels a fine-tuned model says it has (its folder is the truth, not today's params):
    what a standalone ``lmops evaluate MODEL`` scores it as. Unchanged for a folder that does not say."""
    from lmops.tasks.predict import saved_labels, saved_task

    task, labels = saved_task(model_dir), saved_labels(model_dir)
    update = {}
    if task and task != p.finetune.task:
        update["finetune"] = p.finetune.model_copy(update={"task": task})
    if labels and sorted(labels) != sorted(p.validate_.labels):
        update["validate_"] = p.validate_.model_copy(update={"labels": labels})
    return p.model_copy(update=update) if update else p


def evaluate(p: Params, model_dir: str | Path, data_path: Path, out: Path, title: str):
    from lmops.errors import DataError
    from lmops.tasks.evaluate import EvalResult, evaluate_model
    from lmops.tasks.predict import saved_task
    from lmops.tasks.stagecache import file_digest, model_identity

    task, max_length = saved_task(model_dir), reading_length(p, model_dir)
    if task and task != p.finetune.task:
        raise DataError(f"model {model_dir} was trained for finetune.task {task}, but these params score finetune.task {p.finetune.task} "
                        "(its rows and metrics): compare it with models of its own task, or set finetune.task")

    def compute():
        return evaluate_model(Path(model_dir), data_path, p.validate_.labels, max_length, p.evaluate.batch_size, out,
                              p.finetune.kind, title=title)

    inputs = {"model": model_identity(model_dir), "data": file_digest(data_path), "labels": p.validate_.labels, "task": p.finetune.task,
              "max_length": max_length, "title": title}
    return _reuse(p, "evaluate", inputs, out, compute, lambda d: EvalResult(**d))


def gate(p: Params, run: RunLayout, candidate, model_dir: str | Path | None = None, root: Path | None = None):
    """Score the current champion now on the same test split, and both models on every ``gate.sets`` entry
    (``model_dir``: the candidate's folder; paths relative to ``root``); then decide (``gate/decision.json``)."""
    from lmops.tasks import registry
    from lmops.tasks.gate import decide

    champ = registry.get_version(p.register_.model_name, registry.CHAMPION)
    champ_eval, local, paired, test_rows, seen_test, notes = None, None, candidate, run.data.test, 0, []
    if champ is not None:
        local = registry.download_version(champ, run.gate / "champion")
        # a champion trained on some of these rows (another split, data split anew) scores them from memory: both are
        # compared on the rest; one that trained on all of them is compared on all (it can then only block). Without
        # the candidate's folder it cannot be scored again on fewer rows: then all rows, as before
        if model_dir is not None:
            test_rows, seen_test, note = _unseen_by(local, f"champion v{champ.version}", run.data.test, run.gate / "held-out-test.parquet")
            notes += [note] if note else []
        champ_eval = evaluate(p, local, test_rows, run.gate / "champion-eval", f"Champion v{champ.version} on the same test split"
                              + (f", less the {seen_test} rows it trained on" if seen_test else ""))
        if seen_test:
            paired = evaluate(p, model_dir, test_rows, run.gate / "candidate-held-out", f"Candidate on the test rows champion v{champ.version} did not train on")
            notes.append(f"champion v{champ.version} was trained or validated on {seen_test} of the {candidate.n} test rows: the two are compared "
                         f"on the other {paired.n}")
    sets = {}
    for name, spec in p.gate.sets.items():
        out = run.gate / "sets" / name
        data, _, left_out = _labeled_set(p, spec, root, run.data, out / "data")
        if local:
            data, seen_here, note = _unseen_by(local, f"champion v{champ.version}", data, out / "data" / "held-out.parquet")
            left_out += seen_here
            notes += [f"set {name}: {note}"] if note else []
        cand = evaluate(p, model_dir, data, out / "candidate", f"Candidate on {name}")
        ch = evaluate(p, local, data, out / "champion", f"Champion v{champ.version} on {name}") if local else None
        sets[name] = _scores(p, cand, ch, left_out)
    decision = decide(candidate.headline(), champ_eval.headline() if champ_eval else None, p.gate, str(champ.version) if champ else None,
                      test=_scores(p, paired, champ_eval, seen_test), sets=sets, sources=_source_scores(p, paired, champ_eval, test_rows),
                      paired=paired.headline() if seen_test else None, notes=notes)
    run.gate.mkdir(parents=True, exist_ok=True)
    run.gate_decision.write_text(json.dumps(decision.to_dict(), indent=2))
    return decision


def sweep_sets(p: Params, spec, data: Snapshot, out: Path, root: Path) -> dict[str, Path]:
    """A sweep's out-of-source selection sets (``spec.sets``), read once with the ingest rules, less their rows that
    are training or validation data: {name: rows}. A file that is also one of ``gate.sets`` is refused: a canary
    the configuration was chosen on no longer tells the gate how it does on unseen data."""
    from lmops.errors import UserError

    gate_files = {_project_file(g.path, root): name for name, g in p.gate.sets.items()}
    clash = [f"sets.{name} is gate.sets.{gate_files[_project_file(s.path, root)]} too ({s.path})" for name, s in spec.sets.items()
             if _project_file(s.path, root) in gate_files]
    missing = [f"sets.{name}: {_project_file(s.path, root)} does not exist" for name, s in spec.sets.items() if not _project_file(s.path, root).is_file()]
    if clash or missing:
        raise UserError(f"sweep {spec.name}: " + "; ".join(clash + missing)
                        + ("; choose on another slice than the gate judges on (a canary the sweep chose on is not unseen)" if clash else ""))
    rows = {}
    for name, s in spec.sets.items():
        rows[name], counts, left_out = _labeled_set(p, s, root, data, out / name)
        print(f"sweep set {name}: {counts.kept - left_out} rows scored; of {counts.rows_in} read, {counts.quarantined} quarantined, "
              f"{counts.duplicates} duplicates, {left_out} left out as training or validation data", file=sys.stderr)
    return rows


def _project_file(path: str, root: Path | None) -> Path:
    """A path from params or a sweep file: as given when absolute, else under the project root."""
    return (Path(path) if Path(path).is_absolute() else (root or Path.cwd()) / path).resolve()


def _labeled_set(p: Params, spec, root: Path | None, data: Snapshot, out: Path):
    """A named labeled file (``gate.sets`` or a sweep's ``sets`` entry) through the ingest rules, less its rows that
    are ``data``'s training or validation rows: (rows, the file's row counts, how many were left out)."""
    from lmops.tasks.evaluate import load_labeled_file

    return load_labeled_file(_project_file(spec.path, root), p, out, spec.file_columns(), exclude=[data.train, data.validation])


def _unseen_by(model: Path, name: str, data_path: Path, out_path: Path) -> tuple[Path, int, str | None]:
    """The rows of ``data_path`` ``model`` was not fitted or selected on (all of them when it recorded nothing), how
    many were left out, and a note when it had seen every one (then all are kept: its score is in-sample)."""
    from lmops.errors import DataError
    from lmops.tasks import seen

    try:
        rows, counts = seen.held_out(data_path, [(name, model)], out_path)
    except DataError:
        return data_path, 0, f"{name} was trained or validated on every row of {data_path.name}: compared on all of them, its score in-sample"
    return rows, counts[name] or 0, None


def _scores(p: Params, cand, champ=None, left_out: int = 0):
    """One evaluation set for the gate: the candidate's intervals and, with a champion scored on the same rows,
    the paired bootstrap of (candidate − champion)."""
    import pandas as pd

    from lmops.tasks.gate import SetScores

    diff = None
    if champ is not None:
        a, b = pd.read_parquet(champ.predictions_path), pd.read_parquet(cand.predictions_path)
        diff = p.finetune.kind.paired_bootstrap(b["label"].tolist(), a["prediction"].tolist(), b["prediction"].tolist(), p.validate_.labels,
                                                p.project.seed)
    return SetScores(n=cand.n, candidate=cand.headline(), champion=champ.headline() if champ is not None else None,
                     ci95=cand.report.get("ci95"), diff=diff, left_out=left_out)


def _source_scores(p: Params, cand, champ, test_path: Path) -> dict:
    """The test split's rows of each source, scored for the gate like a named set (nothing when it holds one source)."""
    import pandas as pd

    from lmops.tasks.gate import SetScores

    slices = cand.report.get("slices") or {}
    if len(slices) < 2:
        return {}
    b = pd.read_parquet(cand.predictions_path)
    source = pd.read_parquet(test_path, columns=["id", "source"]).set_index("id")["source"].loc[b["id"]].to_numpy()
    a = pd.read_parquet(champ.predictions_path).set_index("id").loc[b["id"]] if champ is not None else None
    kind, labels, seed = p.finetune.kind, p.validate_.labels, p.project.seed
    out = {}
    for name in sorted(slices):
        rows = source == name
        refs, preds = b["label"][rows].tolist(), b["prediction"][rows].tolist()
        champ_slice = (champ.report.get("slices") or {}).get(name) if champ is not None else None
        out[name] = SetScores(n=int(rows.sum()), candidate={k: slices[name][k] for k in ("accuracy", "macro_f1", "micro_f1")},
                              champion={k: champ_slice[k] for k in ("accuracy", "macro_f1", "micro_f1")} if champ_slice else None,
                              ci95=kind.interval(refs, preds, labels, seed),
                              diff=kind.paired_bootstrap(refs, a["prediction"].to_numpy()[rows].tolist(), preds, labels, seed) if champ_slice else None)
    return out


def register(p: Params, run: RunLayout, root: Path, data, report, pre, ft, ev, decision, flow_run_id: str = "", deployment_id: str = "",
             root_flow_run_id: str = ""):
    """Log the candidate to MLflow, read it back, register the version; move the champion if the gate said so."""
    from lmops.tasks import registry
    from lmops.tasks.modelcard import write_model_card
    from lmops.tasks.readback import check_readback
    from lmops.tasks.stagecache import code_version
    from lmops.tasks.version import git_info

    lineage = {
        "data_version": data.md5,
        "params_hash": p.hash(),
        "model_params_hash": p.model_hash(),
        "code_version": code_version(),
        **{k: str(v).lower() if isinstance(v, bool) else str(v or "") for k, v in git_info(root).items()},
        "flow_run_id": flow_run_id,
        "deployment_id": deployment_id,
        "root_flow_run_id": root_flow_run_id or flow_run_id,  # the deployment's run when the pipeline ran as its subflow
        "parent_model": p.finetune.base_model or (pre.model_dir if pre else ""),
        "finetune_method": ft.method,
        "finetune_weights": ft.best_weights,  # "averaged" when finetune.averaging's average was the better one
        # a soup's members (run folders or the references it was given) and which of them it averaged
        **({"soup": json.dumps({k: ft.soup[k] for k in ("method", "members", "used", "start")})} if ft.soup else {}),
        "gate_promote": str(decision.promote).lower(),
        "gate_reasons": json.dumps(decision.reasons),
        "run_dir": str(run.root),
        "validation": f"passed ({len(report.outcomes)}/{len(report.outcomes)} expectations)",
    }
    metrics = {**ev.headline(), **ev.extra(), "val_macro_f1": ft.val_macro_f1, "trainable_params": ft.trainable_params}
    if pre:
        metrics.update(pretrain_perplexity=pre.perplexity, pretrain_eval_loss=pre.eval_loss, pretrain_tokens_per_s=pre.tokens_per_s)
    run.params_json.write_text(json.dumps(p.to_dict(), indent=2))
    card = write_model_card(run.model_card, p.register_.model_name, lineage, metrics, p.to_dict(), Path(ev.report_path).read_text(),
                            " ".join(["lmops", *sys.argv[1:]]), p.finetune.kind)
    monitor_ref = None
    if p.finetune.task == "sequence":  # what the monitor's drift check compares the scored stream with
        from lmops.tasks.monitor.drift import write_reference

        monitor_ref = write_reference(ft.model_dir, run.data.train, run.data.test, ev.predictions_path, p.validate_.labels,
                                      reading_length(p, ft.model_dir), run.stage("monitor-reference"))
    artifacts = {
        "monitor": monitor_ref,
        "model": Path(ft.model_dir), "adapter": Path(ft.adapter_dir) if ft.adapter_dir else None, "evaluate": run.stage("evaluate"),
        "validate": run.validate, "gate": run.gate_decision, "lineage": run.params_json, "model_card": card,
        "plots": Path(ft.loss_plot), "pretrain": Path(pre.loss_plot) if pre else None,
    }
    run_id, source = registry.log_candidate(p.register_.experiment, run.name, p.to_dict(), metrics, lineage, artifacts,
                                            registry.training_curves(pre.history if pre else [], ft.history))
    # Read the logged model back and make sure it predicts what we evaluated before registering it.
    check_readback(source, Path(ev.predictions_path), run.data.test, p.validate_.labels, reading_length(p, ft.model_dir), run.stage("readback"),
                   p.finetune.kind)
    return registry.register_version(p.register_.model_name, run_id, source, lineage, decision.promote, decision.champion_version,
                                     description="\n".join(decision.reasons))


def compare_bases(p: Params, data: Snapshot, run: RunLayout, domain_model: str, generic: str) -> dict:
    """Does domain pretraining pay? The same fine-tuning from the generic base, both scored on the test
    split, and the paired-bootstrap difference (domain − generic) with its 95% interval (the task kind
    says what is resampled: rows, or sentences for NER)."""
    from lmops.models import resolve_model_ref

    g = finetune(p, data, resolve_model_ref(generic), run.stage("finetune-generic"))
    domain = evaluate(p, domain_model, data.test, run.stage("evaluate-domain"), "domain base on the test split")
    plain = evaluate(p, g.model_dir, data.test, run.stage("evaluate-generic"), "generic base on the test split")
    return {"generic_base": generic, "domain": domain.headline(), "generic": plain.headline(), "domain_minus_generic": _scores(p, domain, plain).diff}


def compare_models(p: Params, a: list, b: list, data_path: Path, out: Path, names: tuple[str, str] = ("A", "B")) -> dict:
    """Score two models on the same rows and say whether (B − A) is distinguishable from noise: the paired
    bootstrap's 95% interval excludes 0. ``a`` / ``b`` are lists of models: one each, or runs of one recipe with other
    seeds, when each side's score is the mean over its runs and the interval resamples the runs too (training noise,
    not only which rows were tested). Writes ``out/report.md``; returns both headlines and the difference."""
    import pandas as pd

    from lmops.tasks import seen

    runs_a, runs_b = list(a), list(b)

    def run_names(name: str, k: int) -> list[str]:
        parts = name.split(",")
        return [name] if k == 1 else parts if len(parts) == k else [f"{name} [{i + 1}]" for i in range(k)]

    labels_a, labels_b = run_names(names[0], len(runs_a)), run_names(names[1], len(runs_b))
    # a row any of them was fitted or selected on is no test of it (another seed's split, a source it trained on):
    # every model is scored on the rows none of them saw
    rows, seen_counts = seen.held_out(data_path, list(zip(labels_a + labels_b, runs_a + runs_b)), out / "held-out.parquet")
    sub = (lambda side, i, k: out / side if k == 1 else out / f"{side}{i + 1}")
    ra = [evaluate(p, m, rows, sub("a", i, len(runs_a)), f"{labels_a[i]} on {data_path.name}") for i, m in enumerate(runs_a)]
    rb = [evaluate(p, m, rows, sub("b", i, len(runs_b)), f"{labels_b[i]} on {data_path.name}") for i, m in enumerate(runs_b)]
    # one run a side: the plain paired bootstrap, draw for draw (what the gate computes)
    frames = [pd.read_parquet(r.predictions_path) for r in ra + rb]
    diff = p.finetune.kind.paired_bootstrap_runs(frames[0]["label"].tolist(), [f["prediction"].tolist() for f in frames[: len(ra)]],
                                                 [f["prediction"].tolist() for f in frames[len(ra):]], p.validate_.labels, p.project.seed)

    def side(results, name, labels):
        heads = [r.headline() for r in results]
        mean = heads[0] if len(heads) == 1 else {k: round(sum(h[k] for h in heads) / len(heads), 6) for k in heads[0]}
        if len(results) == 1:
            return {"model": name, **mean, "ci95": results[0].report.get("ci95")}
        return {"model": name, **mean, "runs": [{"model": m, **h} for m, h in zip(labels, heads)]}

    sa, sb = side(ra, names[0], labels_a), side(rb, names[1], labels_b)
    metrics = [m for m in dict.fromkeys((p.gate.primary_metric, "macro_f1", "accuracy", "micro_f1")) if m in diff]
    def distinguishable(d) -> bool:  # the 95% interval of the difference leaves out 0
        return d["ci95"][0] > 0 or d["ci95"][1] < 0

    verdicts = {m: distinguishable(diff[m]) for m in metrics}
    # the same difference on each of the kind's slices of these rows that the predictions identify (the entity
    # kind's pairs of headlines whose entities disagree): a change made for one kind of row is judged on those rows
    slices = {}
    for name, idx in p.finetune.kind.slices(frames[0]).items():
        pick = (lambda values: [values[i] for i in idx])  # noqa: E731
        d = p.finetune.kind.paired_bootstrap_runs(pick(frames[0]["label"].tolist()), [pick(f["prediction"].tolist()) for f in frames[: len(ra)]],
                                                  [pick(f["prediction"].tolist()) for f in frames[len(ra):]], p.validate_.labels, p.project.seed)
        slices[name] = {"n": len(idx), **{m: d[m] for m in metrics if m in d}}
    resampled = (f"paired bootstrap, {diff['n_bootstrap']} resamples of the same rows for both models" if "runs" not in diff else
                 f"the mean over {len(ra)} run(s) of A and {len(rb)} of B; two-level bootstrap, {diff['n_bootstrap']} resamples of the "
                 "same rows and of each side's runs (so the interval holds the spread between seeds too)")
    lines = [f"# {names[1]} − {names[0]} on {data_path.name}", "", f"n = {rb[0].n} · {resampled}", "", _seen_line(seen_counts), "",
             f"| metric | {names[0]} | {names[1]} | difference | 95% interval | distinguishable from noise |", "|---|---:|---:|---:|---|---|"]
    for m in metrics:
        d = diff[m]
        lines.append(f"| {m} | {sa[m]:.4f} | {sb[m]:.4f} | {d['diff']:+.4f} | [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] | "
                     f"{'yes' if verdicts[m] else 'no'} |")
    if "runs" in diff:
        lines += ["", "| run | side | " + " | ".join(metrics) + " |", "|---|---|" + "---:|" * len(metrics)]
        lines += [f"| {label} | {side} | " + " | ".join(f"{r.headline()[m]:.4f}" for m in metrics) + " |"
                  for side, labels, results in (("A", labels_a, ra), ("B", labels_b, rb)) for label, r in zip(labels, results)]
    if slices:
        lines += ["", "| slice | n | metric | difference | 95% interval | distinguishable from noise |", "|---|---:|---|---:|---|---|"]
        lines += [f"| {name} | {s['n']} | {m} | {s[m]['diff']:+.4f} | [{s[m]['ci95'][0]:+.4f}, {s[m]['ci95'][1]:+.4f}] | "
                  f"{'yes' if distinguishable(s[m]) else 'no'} |" for name, s in slices.items() for m in metrics if m in s]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"a": sa, "b": sb, "b_minus_a": diff, "distinguishable": verdicts, "n": rb[0].n, "report": str(out / "report.md"),
            "seen_in_training": seen_counts, **({"slices": slices} if slices else {})}


def _seen_line(counts: dict) -> str:
    left = sum(1 for c in counts.values() if c)
    known = ", ".join(f"{name}: {c}" for name, c in counts.items() if c is not None)
    unknown = [name for name, c in counts.items() if c is None]
    text = (f"Rows left out because a model was trained or validated on them — {known}." if left else
            "No row here was a training or validation text of the models that record theirs.")
    return text + (f" Not recorded (trained before lmops kept it, or a base checkpoint): {', '.join(unknown)}." if unknown else "")


def distill(p: Params, teachers: list[Path], data: "Snapshot", out: Path, names: list[str] | None = None) -> dict:
    """Teach ``teachers`` (an ensemble when several) to a student with fewer layers; score the student and every
    teacher on the same test rows (``out/report.md``, intervals from one paired bootstrap per model against the
    first teacher). Returns the summary, each model's headline and the report's path."""
    from dataclasses import asdict

    from lmops.tasks.distill import distill as run_distill

    names = names or [str(t) for t in teachers]
    summary = run_distill([str(t) for t in teachers], data.train, data.validation, data.corpus, p.validate_.labels, p.distill, p.finetune,
                          p.project.seed, out / "distill")
    student = evaluate(p, summary.model_dir, data.test, out / "student-eval", f"student ({len(summary.layers_kept)} layers) on the test split")
    first = evaluate(p, teachers[0], data.test, out / "teacher-0-eval", f"{names[0]} on the test split")
    rows = [("student", student, _scores(p, student, first).diff)]
    for i, t in enumerate(teachers[1:], start=1):
        other = evaluate(p, t, data.test, out / f"teacher-{i}-eval", f"{names[i]} on the test split")
        rows.append((names[i], other, _scores(p, other, first).diff))
    ensemble = None
    if len(teachers) > 1:  # what the student was taught, scored beside it: does one model keep what several bought?
        from lmops.tasks.evaluate import evaluate_ensemble

        ensemble = evaluate_ensemble([(t, reading_length(p, t)) for t in teachers], data.test, p.validate_.labels, p.evaluate.batch_size,
                                     out / "ensemble-eval", p.finetune.kind, f"the ensemble of {len(teachers)} teachers on the test split")
        rows.append(("ensemble of the teachers", ensemble, _scores(p, ensemble, first).diff))
    lines = [f"# Distilled: {len(summary.layers_kept)} of {summary.teacher_layers} layers ({summary.student_params:,} of "
             f"{summary.teacher_params:,} parameters) from {', '.join(names)}", "",
             f"{summary.labeled_rows} labeled + {summary.unlabeled_rows} unlabeled rows, alpha {p.distill.alpha}, T {p.distill.temperature}; "
             f"validation macro-F1: student {summary.val_macro_f1}, teacher{'s (ensemble)' if len(teachers) > 1 else ''} {summary.teacher_val_macro_f1}",
             "", f"| model | macro-F1 (test) | 95% interval | − {names[0]} | 95% interval of the difference |", "|---|---:|---|---:|---|",
             f"| {names[0]} | {first.headline()['macro_f1']:.4f} | {_ci(first)} | | |"]
    for name, res, diff in rows:
        d = diff["macro_f1"]
        lines.append(f"| {name} | {res.headline()['macro_f1']:.4f} | {_ci(res)} | {d['diff']:+.4f} | [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] |")
    result = {"summary": asdict(summary), "student": student.headline(),
              "teachers": {names[0]: first.headline(), **{n: r.headline() for n, r, _ in rows[1:len(teachers)]}}, "report": str(out / "report.md")}
    if ensemble is not None:
        d = _scores(p, student, ensemble).diff["macro_f1"]
        lines += ["", f"student − ensemble of the teachers: {d['diff']:+.4f}, 95% interval [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] "
                  f"(the same test rows, paired)"]
        result.update(ensemble=ensemble.headline(), student_minus_ensemble=d)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return result


def _ci(res) -> str:
    ci = (res.report.get("ci95") or {}).get("macro_f1")
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
