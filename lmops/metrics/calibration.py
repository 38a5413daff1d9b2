"""Expected calibration error (ECE): how far predicted confidence is from observed accuracy.

An `evaluate` metric module kept in the project so evaluation works offline. One import per line.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Expected calibration error over equal-width confidence bins (Guo et al., 2017)."
_KWARGS_DESCRIPTION = """
Args:
    confidences: the predicted class's probability, per example.
    correct: 1 if the prediction was right, else 0.
    n_bins: number of equal-width bins over [0, 1] (default 10).
Returns:
    ece: sum over bins of (bin share) * |accuracy - mean confidence|; bins: per-bin counts and values.
"""


class Calibration(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"confidences": datasets.Value("float64"), "correct": datasets.Value("int64")}),
        )

    def _compute(self, confidences, correct, n_bins=10):
        conf = np.asarray(confidences, dtype=float)
        ok = np.asarray(correct, dtype=float)
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        ece, bins = 0.0, []
        for lo, hi in zip(edges[:-1], edges[1:]):
            inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
            n = int(inside.sum())
            if n:
                gap = abs(ok[inside].mean() - conf[inside].mean())
                ece += n / len(conf) * gap
                bins.append({"lo": float(lo), "hi": float(hi), "n": n, "accuracy": float(ok[inside].mean()), "confidence": float(conf[inside].mean())})
        return {"ece": float(ece), "bins": bins}
