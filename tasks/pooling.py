"""How a sentence classifier turns its token states into one vector (``finetune.pooling``).

``cls``: the architecture's own head (BERT: the first token's state through the pooler). ``mean``: the mean of the
last layer's states over the real tokens (the attention mask), then the head's dropout and linear classifier. A
sentence-transformers checkpoint such as all-MiniLM-L6-v2 was trained to mean-pool: its first-token state and its
pooler were never trained for what a sentence means, its mean was.

The choice is saved in the model's config (``lmops_pooling``) and applied by every reader of the model
(:func:`lmops.tasks.predict.load_classifier`, the ONNX export), so a saved model reads as it was trained."""

from __future__ import annotations

import types

from lmops.errors import UserError

KEY = "lmops_pooling"


def pooling_of(model) -> str:
    return getattr(getattr(model, "config", None), KEY, None) or "cls"


def set_pooling(model, pooling: str) -> None:
    """Record ``pooling`` in the model's config and make its forward pool that way (``finetune.pooling``)."""
    if pooling != "cls" or hasattr(model.config, KEY):  # a default model's config stays as transformers writes it
        setattr(model.config, KEY, pooling)
    apply_pooling(model)


def apply_pooling(model) -> None:
    """Bind the forward the model's config asks for (a freshly loaded model runs its class's own forward)."""
    if pooling_of(model) == "mean":
        linear_head(model, "finetune.pooling: mean", "finetune.pooling: cls")
        model.forward = types.MethodType(_mean_pooled_forward, model)
    elif "forward" in vars(model):
        del model.forward


def linear_head(model, setting: str, fix: str):
    """The model's classifier when it is one linear layer over a hidden state after a dropout (BERT-style sequence
    classifiers), else a UserError saying that ``setting`` needs one and ``fix`` does without."""
    import torch

    head = getattr(model, "classifier", None)
    if not (isinstance(head, torch.nn.Linear) and isinstance(getattr(model, "dropout", None), torch.nn.Dropout)
            and head.in_features == model.config.hidden_size and hasattr(model.base_model, "embeddings")):
        raise UserError(f"{setting} needs a classifier that is one linear layer over the encoder's hidden states "
                        f"(BERT-style sequence classifiers); {type(model).__name__} has another head: set {fix}")
    return head


def _mean_pooled_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, inputs_embeds=None, **_):
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    states = self.base_model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             inputs_embeds=inputs_embeds).last_hidden_state
    if attention_mask is None:
        attention_mask = torch.ones(states.shape[:2], dtype=states.dtype, device=states.device)
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    logits = self.classifier(self.dropout(pooled))
    loss = None
    if labels is not None:
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
    return SequenceClassifierOutput(loss=loss, logits=logits)
