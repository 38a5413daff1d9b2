"""Load a fine-tuned model and predict: what evaluation, the gate, read-back checks and the monitor
share. No training code here; the task kind (lmops.kinds) says how inputs are encoded and decoded."""

from __future__ import annotations

import json
from pathlib import Path

from lmops.kinds import TaskKind


def load_classifier(base: str, labels: list[str], kind: TaskKind):
    """A classifier (or tagger) and its tokenizer from a folder, a ``pkg:``-resolved path or a hub id.

    A soft-prompt adapter folder loads its base model, then the adapter (and its trained head). Weights
    the checkpoint lacked (a fresh head, a BERT pooler absent from MLM checkpoints) are listed in
    ``model.lmops_new_modules``: PEFT must train and save them, or a reload re-randomises them.
    """
    from lmops.models import load_tokenizer

    adapter_cfg = Path(base) / "adapter_config.json"
    if adapter_cfg.is_file():
        from peft import PeftModel

        ref = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        model, _ = load_classifier(ref, labels, kind)
        return PeftModel.from_pretrained(model, base), load_tokenizer(base)
    tokenizer = load_tokenizer(base)
    model, info = kind.auto_model().from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        use_safetensors=True, trust_remote_code=False, output_loading_info=True,
    )
    model.lmops_new_modules = sorted({k.rsplit(".", 1)[0] for k in info["missing_keys"]})
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def predict_logits(model, tokenizer, inputs: list, kind: TaskKind, labels: list[str], max_length: int, batch_size: int):
    """Logits per row: a [n, labels] tensor, or for token kinds a list of [words, labels] tensors."""
    import torch

    model.eval()
    fill = kind.fill_index(labels)
    units: list = []
    with torch.no_grad():
        for i in range(0, len(inputs), batch_size):
            batch = inputs[i : i + batch_size]
            enc = kind.encode(tokenizer, batch, max_length)
            units.extend(kind.batch_logits(enc, model(**enc).logits.float(), batch, fill))
    return kind.stack(units, len(labels))


def predict_labels(model, tokenizer, frame, labels: list[str], kind: TaskKind, max_length: int, batch_size: int) -> tuple[list[str], list[float]]:
    """Predicted label per row (NER: space-separated tags) and its confidence (NER: mean over words)."""
    logits = predict_logits(model, tokenizer, kind.inputs(frame), kind, labels, max_length, batch_size)
    return kind.decode(logits, labels)
