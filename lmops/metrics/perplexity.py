"""Perplexity from summed token losses: exp(Σ loss / Σ tokens).

An `evaluate` metric module kept in the project (the hub's `perplexity` metric downloads GPT-2 and
its script). The model is run by lmops (`tasks.evaluate.evaluate_language_model`); this module
aggregates per-batch summed negative log-likelihoods and their token counts. For a masked LM the
result is the pseudo-perplexity over a fixed, seeded 15% masking.
"""

import math

import datasets
import evaluate

_DESCRIPTION = "Perplexity (or MLM pseudo-perplexity) from per-batch summed losses and token counts."
_KWARGS_DESCRIPTION = """
Args:
    predictions: summed negative log-likelihood (nats) of each batch.
    references: number of predicted tokens in each batch.
Returns:
    perplexity, mean_loss, tokens.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        tokens = int(sum(references))
        if tokens == 0:
            raise ValueError("no predicted tokens: the text is shorter than one block")
        mean = float(sum(predictions)) / tokens
        return {"perplexity": math.exp(min(mean, 50.0)), "mean_loss": mean, "tokens": tokens}
