"""Entity-level NER report (seqeval, CoNLL-style exact span match) plus token accuracy.

An `evaluate` metric module kept in the project so evaluation works offline (the hub's `seqeval`
metric is a script fetched at load time). evaluate parses imports line by line.
"""

import datasets
import evaluate
from seqeval.metrics import accuracy_score
from seqeval.metrics import classification_report

_DESCRIPTION = "seqeval entity-level precision/recall/F1 per type and micro/macro/weighted, plus token accuracy."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of tag sequences (IOB2 strings, e.g. ["B-ORG", "I-ORG", "O"]).
    references: list of tag sequences, same lengths.
Returns:
    accuracy (token level), micro_f1, macro_f1, weighted_f1, per_class {TYPE: {precision, recall, f1, support}},
    averages {micro|macro|weighted: {precision, recall, f1}}.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SeqevalReport(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Nakayama, seqeval (2018); Tjong Kim Sang & De Meulder, CoNLL-2003",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("string")),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
        )

    def _compute(self, predictions, references):
        for i, (p, r) in enumerate(zip(predictions, references)):
            if len(p) != len(r):
                raise ValueError(f"sequence {i}: {len(p)} predicted tags for {len(r)} reference tags")
        rep = classification_report(references, predictions, output_dict=True, zero_division=0)
        averages = {}
        for avg in ("micro", "macro", "weighted"):
            a = rep.pop(f"{avg} avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
            averages[avg] = {"precision": float(a["precision"]), "recall": float(a["recall"]), "f1": float(a["f1-score"])}
        per_class = {
            name: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]), "support": int(v["support"])}
            for name, v in sorted(rep.items())
        }
        return {
            "accuracy": float(accuracy_score(references, predictions)) if references else 0.0,
            "micro_f1": averages["micro"]["f1"],
            "macro_f1": averages["macro"]["f1"],
            "weighted_f1": averages["weighted"]["f1"],
            "per_class": per_class,
            "averages": averages,
        }
