"""The monitor stage, as the CLI (``lmops monitor score``) and the flow (``flows/monitor.py``) both run it:
score the inputs with the champion → store → spikes and drift → dashboard."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmops.config import Params


@dataclass
class FileCounts:
    rows_in: int = 0
    scored: int = 0
    quarantined: int = 0
    duplicates: int = 0  # already in the store (scored before) or repeated within this input


@dataclass
class ScoreSummary:
    model: str
    version: str
    alias: str
    store: str
    files: dict[str, FileCounts] = field(default_factory=dict)
    quarantine: str = ""
    seconds: float = 0.0

    def total(self) -> FileCounts:
        t = FileCounts()
        for c in self.files.values():
            for k in vars(t):
                setattr(t, k, getattr(t, k) + getattr(c, k))
        return t

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "files"}, "files": {f: asdict(c) for f, c in self.files.items()},
                **asdict(self.total())}


def model_name(p: Params) -> str:
    return p.monitor.model or p.register_.model_name


def score(p: Params, inputs: list[Path], store, out_dir: Path, scorer, loaded: dict | None = None, now: float | None = None,
          progress: bool = True) -> ScoreSummary:
    """Score every document of ``inputs`` not already in ``store``, chunk by chunk (each chunk committed whole)."""
    from lmops.tasks.monitor import scoring
    from lmops.tasks.monitor.entities import EntityMatcher
    from lmops.tasks.monitor.inputs import Doc, check_columns, files_of, read_docs

    m = p.monitor
    files = [f for path in inputs for f in files_of(Path(path))]
    for f in files:
        check_columns(f, m)
    ent_scorer = scoring.load(m.entity_model, m.alias, task="entity", loaded=loaded) if m.entity_model else None
    ner = scoring.load(m.ner_model, m.alias, task="token", loaded=loaded) if m.ner_model else None
    matcher = EntityMatcher(m.entities)
    now = time.time() if now is None else now
    out_dir.mkdir(parents=True, exist_ok=True)
    qpath = out_dir / "quarantine.jsonl"
    summary = ScoreSummary(scorer.name, scorer.version, m.alias, store.where, quarantine=str(qpath))
    bar = _bar(progress)
    started = time.time()
    with open(qpath, "w") as qf:
        for f in files:
            counts = summary.files.setdefault(str(f), FileCounts())
            chunk: list[Doc] = []
            for item in read_docs(f, m, now):
                counts.rows_in += 1
                bar.update(1)
                if isinstance(item, Doc):
                    chunk.append(item)
                else:
                    counts.quarantined += 1
                    qf.write(json.dumps(asdict(item)) + "\n")
                if len(chunk) >= m.chunk_rows:
                    _score_chunk(chunk, counts, scorer, ent_scorer, ner, matcher, p, store)
                    chunk = []
            _score_chunk(chunk, counts, scorer, ent_scorer, ner, matcher, p, store)
    bar.close()
    summary.seconds = round(time.time() - started, 3)
    return summary


def _bar(progress: bool):
    from tqdm.auto import tqdm

    return tqdm(desc="scoring", unit=" rows", disable=not progress, mininterval=2)


def _score_chunk(chunk: list, counts: FileCounts, scorer, ent_scorer, ner, matcher, p: Params, store) -> None:
    from lmops.tasks.monitor.drift import unk_counts, words

    if not chunk:
        return
    m = p.monitor
    seen: set[str] = set()
    fresh = []
    known = store.known([d.id for d in chunk])
    for d in chunk:
        if d.id in known or d.id in seen:
            counts.duplicates += 1
        else:
            seen.add(d.id)
            fresh.append(d)
    if not fresh:
        return
    texts = [d.text for d in fresh]
    probs = _by_length(texts, lambda t: scorer.probabilities(t, m.batch_size, m.max_length))
    pos, neg = scorer.labels.index(m.positive_label), scorer.labels.index(m.negative_label)
    toks = unk_counts(scorer.tokenizer, texts, m.max_length)
    scored_at = time.time()
    found = [matcher.find(t) for t in texts]
    if ner is not None:  # the tagger's companies after the dictionary's (a company named both ways counts once)
        from lmops.tasks.monitor.entities import ner_mentions

        tagged = ner_mentions(ner.tags(texts, m.batch_size, m.max_length), texts, matcher, m.ner_types)
        found = [f + [x for x in t if x[0] not in dict(f)] for f, t in zip(found, tagged)]
    docs, mentions, pairs = [], [], []
    for d, pr, (n_tok, n_unk), companies in zip(fresh, probs, toks, found):
        j = int(pr.argmax())
        ws = words(d.text)
        score = float(pr[pos] - pr[neg])
        docs.append({"id": d.id, "ts": d.ts, "source": d.source, "file": d.file, "text": d.text, "label": scorer.labels[j],
                     "confidence": float(pr[j]), "score": score, "model": scorer.name, "version": scorer.version, "words": len(ws),
                     "oov": sum(1 for w in ws if w not in scorer.vocab) if scorer.vocab else 0, "tokens": n_tok, "unk": n_unk,
                     "scored_at": scored_at})
        for entity, surface in companies:
            mentions.append({"doc_id": d.id, "entity": entity, "surface": surface, "ts": d.ts, "label": scorer.labels[j], "score": score,
                             "version": scorer.version, "by_entity_model": False})
            pairs.append((len(mentions) - 1, surface, d.text))
    if ent_scorer is not None and pairs:
        ep = ent_scorer.probabilities([t for _, _, t in pairs], m.batch_size, m.max_length, pairs=[s for _, s, _ in pairs])
        epos, eneg = ent_scorer.labels.index(m.positive_label), ent_scorer.labels.index(m.negative_label)
        for (k, _, _), pr in zip(pairs, ep):
            j = int(pr.argmax())
            mentions[k].update(label=ent_scorer.labels[j], score=float(pr[epos] - pr[eneg]), version=f"{ent_scorer.name} v{ent_scorer.version}",
                               by_entity_model=True)
    store.add(docs, mentions)
    counts.scored += len(docs)


def _by_length(texts: list[str], fn):
    """``fn`` over the texts sorted by length (batches of similar length pad less), results back in input order."""
    import numpy as np

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = fn([texts[i] for i in order])
    back = np.empty_like(out)
    back[order] = out
    return back


def analyse(p: Params, store, scorer_ref: tuple[str, str], reference: dict | None) -> dict[str, Any]:
    """Aggregates, spikes (new ones flagged), top movers and the drift verdict for the champion that scores now."""
    from lmops.tasks.monitor.drift import compare
    from lmops.tasks.monitor.spikes import detect, movers

    m = p.monitor
    series = store.buckets(m.bucket_s, m.positive_label, m.negative_label)
    found = [s for entity, buckets in series.items() for s in detect(entity, buckets, m.spikes, m.bucket_s)]
    new = store.new_alerts(found, m.bucket_s)
    name, version = scorer_ref
    drift = compare(reference, store.recent(version, name, m.drift.window_rows), m.drift, version)
    before = store.last_drift(version)
    store.record_drift(drift)
    # drift announces itself once per version when it starts, not on every run while it lasts (each would retrain)
    drift_new = drift.drifted and not (before and before["drifted"])
    return {"series": series, "spikes": found, "new_spikes": new, "movers": movers(series, m.spikes, m.bucket_s),
            "drift": drift, "drift_new": drift_new, "totals": store.totals()}


def monitor(p: Params, inputs: list[Path], out_dir: Path, dashboard_dir: Path | None = None, loaded: dict | None = None,
            now: float | None = None, progress: bool = True) -> dict[str, Any]:
    """The whole stage; returns a JSON-able summary (``monitor.json`` in ``out_dir``)."""
    from lmops.env import lmops_home
    from lmops.tasks.locks import file_lock
    from lmops.tasks.monitor import dashboard, scoring
    from lmops.tasks.monitor.store import Store

    store = Store(p.monitor.store)
    loaded = {} if loaded is None else loaded
    dashboard_dir = dashboard_dir or lmops_home() / "monitor" / "dashboard"
    # one writer at a time per store on this machine (DuckDB allows one writing process; PostgreSQL is fine either way)
    with file_lock(lmops_home() / "locks" / "monitor-store.lock", p.register_.wait_for_other_run_s, "the monitor store"), store:
        # resolved once: the version that scores is the version the analysis and the page name
        scorer = scoring.load(model_name(p), p.monitor.alias, loaded=loaded, runtime=p.monitor.runtime)
        s = score(p, inputs, store, out_dir, scorer, loaded=loaded, now=now, progress=progress) if inputs else None
        a = analyse(p, store, (scorer.name, scorer.version), scorer.reference)
        page = dashboard.render(p, a, store.alerts(p.monitor.bucket_s), scorer, dashboard_dir)
    out = {"scoring": s.to_dict() if s else None, "model": scorer.name, "version": scorer.version, "alias": p.monitor.alias,
           "runtime": p.monitor.runtime,
           "spikes": [x.to_dict() for x in a["spikes"]], "new_spikes": [x.to_dict() for x in a["new_spikes"]], "movers": a["movers"],
           "drift": a["drift"].to_dict(), "drift_new": a["drift_new"], "totals": a["totals"], "dashboard": str(page["html"]), "plot": str(page["png"]),
           "run_dir": str(out_dir)}
    (out_dir / "monitor.json").write_text(json.dumps(out, indent=2, default=str))
    return out


def inbox(p: Params, root: Path) -> Path:
    return (root / p.monitor.inbox_dir).resolve()


def inbox_files(p: Params, root: Path, settle_s: float = 5.0) -> list[Path]:
    """Files waiting in the inbox, unchanged for ``settle_s`` (a copy in progress is left for the next run)."""
    from lmops.tasks.arrival import _settled
    from lmops.tasks.monitor.inputs import SUFFIXES

    folder = inbox(p, root)
    now = time.time()
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES
                  and _settled(f.name, f.stat().st_mtime, settle_s, now)) if folder.is_dir() else []


def file_done(files: list[Path], p: Params, root: Path) -> None:
    """Scored files move to ``<inbox>/done/`` (their documents are in the store; a re-score would count duplicates)."""
    done = inbox(p, root) / "done"
    done.mkdir(parents=True, exist_ok=True)
    for f in files:
        f.replace(done / f.name)
