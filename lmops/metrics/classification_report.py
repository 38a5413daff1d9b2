"""Classification report: accuracy, per-class and micro/macro/weighted precision, recall, F1, support.

An `evaluate` metric module kept in the project so evaluation works offline
(`evaluate.load("accuracy")` fetches its script from the hub). evaluate parses imports line by line.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import confusion_matrix
from sklearn.metrics import precision_recall_fscore_support

_DESCRIPTION = "Accuracy plus per-class, micro, macro and weighted precision/recall/F1 and a confusion matrix."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted label ids.
    references: true label ids.
    labels: label names, index = id (optional; default: ids as strings).
Returns:
    accuracy, macro_f1, weighted_f1, micro_f1, per_class {name: {precision, recall, f1, support}},
    averages {macro|micro|weighted: {precision, recall, f1}}, confusion_matrix (rows = true).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClassificationReport(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, labels=None):
        preds = np.asarray(predictions)
        refs = np.asarray(references)
        n = len(labels) if labels else int(max(preds.max(initial=0), refs.max(initial=0)) + 1)
        names = list(labels) if labels else [str(i) for i in range(n)]
        ids = list(range(n))
        p, r, f, s = precision_recall_fscore_support(refs, preds, labels=ids, zero_division=0)
        per_class = {
            names[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i in ids
        }
        averages = {}
        for avg in ("macro", "micro", "weighted"):
            ap, ar, af, _ = precision_recall_fscore_support(refs, preds, labels=ids, average=avg, zero_division=0)
            averages[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
        return {
            "accuracy": float((preds == refs).mean()) if len(refs) else 0.0,
            "macro_f1": averages["macro"]["f1"],
            "micro_f1": averages["micro"]["f1"],
            "weighted_f1": averages["weighted"]["f1"],
            "per_class": per_class,
            "averages": averages,
            "confusion_matrix": confusion_matrix(refs, preds, labels=ids).tolist(),
        }
