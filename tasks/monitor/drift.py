"""Drift: is the scored stream still the kind of text the champion was trained on?

The reference is computed once, when a version is registered (``reference_profile``, saved with the version as
``monitor/reference.json``): the label mix and confidences the model predicted on its held-out test split, the
length of test texts, the share of their words never seen in training and of their tokens the tokenizer cannot
represent. The stream's newest documents scored by that version are compared with it (``compare``): PSI
(population stability index, quantile bins of the reference) on the predicted-label mix, the confidences and the
text lengths, and the rise in out-of-vocabulary and unknown-token shares. Any check over its threshold is drift.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmops.config import DriftParams

WORD = re.compile(r"[^\W\d_]+", re.UNICODE)  # words for the vocabulary check: letters only (numbers are not vocabulary)
VOCAB_SIZE = 30000
_EPS = 1e-4


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def unk_counts(tokenizer, texts: list[str], max_length: int) -> list[tuple[int, int]]:
    """(tokens, unknown tokens) per text, special tokens left out."""
    unk = tokenizer.unk_token_id
    ids = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"]
    return [(len(x), sum(1 for t in x if t == unk) if unk is not None else 0) for x in ids]


def _quantile_edges(values: list[float], bins: int = 10) -> list[float]:
    s = sorted(values)
    if not s:
        return []
    edges = sorted({s[min(len(s) - 1, int(len(s) * k / bins))] for k in range(1, bins)})
    return edges


def _binned(values: list[float], edges: list[float]) -> list[float]:
    import bisect

    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bisect.bisect_right(edges, v)] += 1
    # half a document added to every bin: an empty bin in a few hundred documents is not an infinite shift
    return [(c + 0.5) / (len(values) + 0.5 * len(counts)) for c in counts]


def psi(expected: list[float], actual: list[float]) -> float:
    """Population stability index of two share vectors over the same bins (shares floored, so an empty bin is finite)."""
    return float(sum((a - e) * math.log(a / e) for e, a in ((max(e, _EPS), max(a, _EPS)) for e, a in zip(expected, actual))))


def reference_profile(train_texts: list[str], test_texts: list[str], predicted: list[str], confidence: list[float], labels: list[str],
                      tokenizer, max_length: int) -> dict[str, Any]:
    """What the stream is compared with, from the data a version was trained and tested on."""
    counts = Counter(w for t in train_texts for w in words(t))
    vocab = [w for w, _ in counts.most_common(VOCAB_SIZE)]
    vset = set(vocab)
    test_words = [words(t) for t in test_texts]
    lengths = [len(w) for w in test_words]
    train_lengths = [len(words(t)) for t in train_texts]  # the bigger sample: its quantile bins are steadier
    tok = unk_counts(tokenizer, test_texts, max_length)
    n_pred = max(1, len(predicted))
    return {
        "n_train": len(train_texts), "n_test": len(test_texts), "labels": labels,
        "label_mix": [sum(1 for x in predicted if x == l) / n_pred for l in labels],
        "confidence_edges": _quantile_edges(confidence), "confidence_shares": _binned(confidence, _quantile_edges(confidence)),
        "mean_confidence": sum(confidence) / max(1, len(confidence)),
        "length_edges": _quantile_edges(train_lengths), "length_shares": _binned(train_lengths, _quantile_edges(train_lengths)),
        "oov_share": sum(sum(1 for w in ws if w not in vset) for ws in test_words) / max(1, sum(lengths)),
        "unk_share": sum(u for _, u in tok) / max(1, sum(n for n, _ in tok)),
        "vocab": vocab,
    }


@dataclass
class DriftReport:
    version: str
    n: int
    drifted: bool
    verdict: str
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(ref: dict[str, Any] | None, rows: list[dict[str, Any]], p: DriftParams, version: str) -> DriftReport:
    """``rows``: the newest documents scored by ``version``, each with label, confidence, words, oov, tokens, unk."""
    n = len(rows)
    if ref is None:
        return DriftReport(version, n, False, f"no reference for v{version} (registered before lmops saved one): no drift check")
    if n < p.min_rows:
        return DriftReport(version, n, False, f"{n} documents scored by v{version}, fewer than monitor.drift.min_rows={p.min_rows}: no verdict yet")
    labels = ref["labels"]
    mix = [sum(1 for r in rows if r["label"] == l) / n for l in labels]
    conf = [r["confidence"] for r in rows]
    lengths = [r["words"] for r in rows]
    oov = sum(r["oov"] for r in rows) / max(1, sum(lengths))
    unk = sum(r["unk"] for r in rows) / max(1, sum(r["tokens"] for r in rows))
    mean_conf = sum(conf) / n
    checks = [
        ("predicted label mix (PSI)", psi(ref["label_mix"], mix), p.psi, "monitor.drift.psi"),
        ("confidence distribution (PSI)", psi(ref["confidence_shares"], _binned(conf, ref["confidence_edges"])), p.psi, "monitor.drift.psi"),
        ("text length distribution (PSI)", psi(ref["length_shares"], _binned(lengths, ref["length_edges"])), p.psi, "monitor.drift.psi"),
        ("out-of-vocabulary word share, rise", oov - ref["oov_share"], p.oov_increase, "monitor.drift.oov_increase"),
        ("unknown-token share, rise", unk - ref["unk_share"], p.unk_increase, "monitor.drift.unk_increase"),
        ("mean confidence, fall", ref["mean_confidence"] - mean_conf, p.confidence_drop, "monitor.drift.confidence_drop"),
    ]
    out = [{"check": name, "value": round(v, 4), "threshold": t, "param": key, "drifted": v > t} for name, v, t, key in checks]
    out.append({"check": "stream label mix", "value": dict(zip(labels, [round(x, 3) for x in mix])),
                "threshold": dict(zip(labels, [round(x, 3) for x in ref["label_mix"]])), "param": "reference", "drifted": False})
    hit = [c["check"] for c in out if c["drifted"]]
    verdict = (f"drift: {', '.join(hit)} over threshold on the newest {n} documents scored by v{version}" if hit
               else f"no drift on the newest {n} documents scored by v{version}")
    return DriftReport(version, n, bool(hit), verdict, out)


def write_reference(model_dir, train_path, test_path, predictions_path, labels: list[str], max_length: int, out_dir) -> Path:
    """``out_dir/reference.json`` for a version about to be registered (logged as ``monitor/reference.json``)."""
    import json

    import pandas as pd

    from lmops.models import load_tokenizer

    train, test, pred = pd.read_parquet(train_path), pd.read_parquet(test_path), pd.read_parquet(predictions_path)
    pred = pred.set_index("id").loc[test["id"]]  # the test rows in the order of their texts
    ref = reference_profile(train["text"].tolist(), test["text"].tolist(), pred["prediction"].tolist(), pred["confidence"].astype(float).tolist(),
                            labels, load_tokenizer(str(model_dir)), max_length)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reference.json").write_text(json.dumps(ref))
    return out
