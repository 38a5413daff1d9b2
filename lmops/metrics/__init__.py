"""The project's own `evaluate` metric modules, loadable offline by file path, and the score functions
every task kind reports through (one place, so a kind's report and a bootstrap agree)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRICS_DIR = Path(__file__).parent


def metric_path(name: str) -> str:
    return str(METRICS_DIR / f"{name}.py")


def classification_report(predictions: list[int], references: list[int], labels: list[str]) -> dict[str, Any]:
    import evaluate

    return evaluate.load(metric_path("classification_report")).compute(predictions=predictions, references=references, labels=labels)


def seqeval_scores(refs: list[list[int]], preds: list[list[int]], labels: list[str]) -> dict[str, Any]:
    """Entity-level NER report from tag ids (``labels`` maps ids to IOB2 tags)."""
    import evaluate

    return evaluate.load(metric_path("seqeval_report")).compute(
        predictions=[[labels[j] for j in p] for p in preds], references=[[labels[j] for j in r] for r in refs])


def calibration(probs, refs: list[int]) -> dict[str, Any]:
    import evaluate

    conf = probs.max(-1).values.tolist()
    correct = [int(p == r) for p, r in zip(probs.argmax(-1).tolist(), refs)]
    return evaluate.load(metric_path("calibration")).compute(confidences=conf, correct=correct)


def macro_f1(y_true: list[int], y_pred: list[int], n_labels: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=list(range(n_labels)), average="macro", zero_division=0))


def bootstrap_interval(refs: list[int], preds: list[int], labels: list[str], n: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """95% bootstrap intervals (resampled rows) of accuracy and macro-F1: how far the headline could move on
    another sample of the same size. Confusion counts per draw with one bincount, so 1000 draws take milliseconds."""
    import numpy as np

    y, p = np.asarray(refs, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    k = len(labels)
    if len(y) == 0:
        return {"accuracy": [0.0, 0.0], "macro_f1": [0.0, 0.0]}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), (n, len(y)))
    cells = np.stack([np.bincount(y[i] * k + p[i], minlength=k * k) for i in idx]).reshape(n, k, k)  # [draw, true, pred]
    f1 = _macro_f1_of_cells(cells)
    acc = cells[:, np.arange(k), np.arange(k)].sum(1) / len(y)
    return {name: [round(float(v), 4) for v in np.percentile(draws, [2.5, 97.5])] for name, draws in (("accuracy", acc), ("macro_f1", f1))}



def bootstrap_ece(confidences, correct, n: int = 1000, seed: int = 0, n_bins: int = 10) -> list[float]:
    """95% bootstrap interval (resampled rows) of the expected calibration error, binned as the ``calibration``
    metric bins (equal-width, (lo, hi], the first bin closed): on a test split of a thousand rows the ECE itself
    moves by about a point from sample to sample, so a goal like ECE ≤ 0.03 is read against this interval."""
    import numpy as np

    conf = np.asarray(confidences, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if len(conf) == 0:
        return [0.0, 0.0]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], conf, side="left")  # conf in (edges[i], edges[i+1]] → i, as the metric bins
    rng = np.random.default_rng(seed)
    draws = np.empty(n)
    for j, idx in enumerate(rng.integers(0, len(conf), (n, len(conf)))):
        b = bins[idx]
        gap = np.bincount(b, weights=ok[idx] - conf[idx], minlength=n_bins)  # Σ (right − confidence) per bin
        draws[j] = np.abs(gap).sum() / len(conf)
    return [round(float(v), 4) for v in np.percentile(draws, [2.5, 97.5])]

def bootstrap_diff(refs: list[int], pred_a: list[int], pred_b: list[int], labels: list[str], n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap over test rows: (b − a) for accuracy and macro-F1 with a 95% interval."""
    return bootstrap_diff_runs(refs, [pred_a], [pred_b], labels, n=n, seed=seed)


def bootstrap_diff_runs(refs: list[int], runs_a: list[list[int]], runs_b: list[list[int]], labels: list[str], n: int = 1000,
                        seed: int = 0) -> dict[str, Any]:
    """(mean over B's runs − mean over A's runs) for accuracy and macro-F1, with a 95% interval from resampling the
    test rows (the same rows for every run: paired) and, where an arm has several runs (seeds of one recipe), its
    runs as well — a two-level bootstrap, so the interval holds the noise of training as well as of the test rows.
    With one run per arm it is the plain paired bootstrap, draw for draw."""
    import numpy as np

    y = np.asarray(refs, dtype=np.int64)
    A, B = (np.asarray(r, dtype=np.int64).reshape(len(r), len(y)) for r in (runs_a, runs_b))
    k = len(labels)

    def arm(runs, pick, idx):
        return (float(np.mean([(runs[r][idx] == y[idx]).mean() for r in pick])),
                float(np.mean([_macro_f1(y[idx], runs[r][idx], k) for r in pick])))

    def scores(idx, pick_a, pick_b):
        (acc_a, f1_a), (acc_b, f1_b) = arm(A, pick_a, idx), arm(B, pick_b, idx)
        return acc_b - acc_a, f1_b - f1_a

    def runs(k):  # a resample of an arm's runs (none to draw when it has one)
        return rng.integers(0, k, k) if k > 1 else [0]

    rng = np.random.default_rng(seed)
    draws = np.array([scores(rng.integers(0, len(y), len(y)), runs(len(A)), runs(len(B))) for _ in range(n)])
    point = scores(np.arange(len(y)), range(len(A)), range(len(B)))
    out = {}
    for j, name in enumerate(("accuracy", "macro_f1")):
        lo, hi = np.percentile(draws[:, j], [2.5, 97.5])
        out[name] = {"diff": round(point[j], 4), "ci95": [round(float(lo), 4), round(float(hi), 4)], "p_b_not_better": round(float((draws[:, j] <= 0).mean()), 4)}
    out["n_test"], out["n_bootstrap"] = len(y), n
    if len(A) > 1 or len(B) > 1:
        out["runs"] = {"a": len(A), "b": len(B)}
    return out


def _macro_f1_of_cells(cells):
    """Macro-F1 of confusion counts ``[..., true, pred]``, as sklearn's ``f1_score(average="macro", labels=range(k),
    zero_division=0)``: 2·tp / (support + predicted) per class, 0 where both are 0, every label counted."""
    import numpy as np

    k = cells.shape[-1]
    tp = cells[..., np.arange(k), np.arange(k)].astype(np.float64)
    denom = cells.sum(-1) + cells.sum(-2)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0).mean(-1)


def _macro_f1(y, p, k: int) -> float:
    """Macro-F1 of one draw from one bincount: sklearn's own call costs ~4 ms, and a paired bootstrap makes 2,000."""
    import numpy as np

    return float(_macro_f1_of_cells(np.bincount(y * k + p, minlength=k * k).reshape(k, k)))


def bootstrap_diff_entities(refs: list[list[str]], pred_a: list[list[str]], pred_b: list[list[str]], n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """NER: paired bootstrap over sentences of (b − a) for entity micro-F1 (seqeval's exact spans) and token
    accuracy, with 95% intervals. Sentences are resampled whole, so the spans inside one stay together."""
    import numpy as np
    from seqeval.metrics.sequence_labeling import get_entities

    def counts(pred: list[list[str]]) -> np.ndarray:  # per sentence: true positives, predicted, gold, correct tags, tags
        rows = []
        for r, p in zip(refs, pred):
            gold, found = set(get_entities(r)), set(get_entities(p))
            rows.append((len(gold & found), len(found), len(gold), sum(x == y for x, y in zip(r, p)), len(r)))
        return np.asarray(rows, dtype=np.float64).reshape(-1, 5)

    ca, cb = counts(pred_a), counts(pred_b)

    def scores(idx) -> tuple[float, float]:
        out = []
        for c in (cb, ca):
            tp, found, gold, right, tags = c[idx].sum(0)
            out.append((2 * tp / (found + gold) if found + gold else 0.0, right / tags if tags else 0.0))
        return out[0][0] - out[1][0], out[0][1] - out[1][1]

    rng = np.random.default_rng(seed)
    draws = np.array([scores(rng.integers(0, len(refs), len(refs))) for _ in range(n)])
    point = scores(np.arange(len(refs)))
    out: dict[str, Any] = {}
    for j, name in enumerate(("micro_f1", "accuracy")):
        lo, hi = np.percentile(draws[:, j], [2.5, 97.5])
        out[name] = {"diff": round(point[j], 4), "ci95": [round(float(lo), 4), round(float(hi), 4)], "p_b_not_better": round(float((draws[:, j] <= 0).mean()), 4)}
    out["n_test"], out["n_bootstrap"], out["unit"] = len(refs), n, "sentence"
    return out
