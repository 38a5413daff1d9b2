"""Load a fine-tuned model and predict: what evaluation, the gate, read-back checks and the monitor
share. No training code here; the task kind (lmops.kinds) says how inputs are encoded and decoded."""

from __future__ import annotations

import json
from pathlib import Path

from lmops.kinds import TaskKind
from lmops.kinds.base import Reading


def saved_labels(model_dir: str | Path) -> list[str] | None:
    """The label names a fine-tuned classifier was saved with (its config's id2label, in output order), or
    None for a model without a trained head (a pretrained LM, a hub id, default ``LABEL_i`` names)."""
    cfg = Path(model_dir) / "config.json"
    if not cfg.is_file():
        return None
    conf = json.loads(cfg.read_text())
    if not any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in conf.get("architectures") or []):
        return None
    names = [conf.get("id2label", {}).get(str(i)) for i in range(len(conf.get("id2label", {})))]
    if not names or any(n is None or n.startswith("LABEL_") for n in names):
        return None
    return names


def saved_config(model_dir: str | Path) -> dict:
    """The config a model folder was saved with ({} if none): its config.json, or for a soft-prompt folder that of the
    base embedded in it (where its adapter points, as ``load_classifier`` reads it)."""
    folder = Path(model_dir)
    adapter_cfg = folder / "adapter_config.json"
    if adapter_cfg.is_file():
        folder = folder / json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
    cfg = folder / "config.json"
    return json.loads(cfg.read_text()) if cfg.is_file() else {}


def saved_task(model_dir: str | Path) -> str | None:
    """The task kind a fine-tuned model was trained for (``lmops_task`` in its config; a tagger by its architecture for
    models saved before that was recorded), or None when the folder does not say (then params decide)."""
    cfg = saved_config(model_dir)
    if cfg.get("lmops_task"):
        return cfg["lmops_task"]
    return "token" if any(a.endswith("ForTokenClassification") for a in cfg.get("architectures") or []) else None


def saved_max_length(model_dir: str | Path) -> int | None:
    """The tokens per input a fine-tuned model was trained on (its finetune.max_length, ``lmops_max_length``), or None."""
    return saved_config(model_dir).get("lmops_max_length")


def load_classifier(base: str, labels: list[str], kind: TaskKind, train: bool = False):
    """A classifier (or tagger) and its tokenizer from a folder, a ``pkg:``-resolved path or a hub id.

    To predict, a fine-tuned model is read with its own saved label mapping (the artifact is the truth, not
    today's ``validate.labels``): its outputs are reordered into ``labels`` order by name
    (``model.lmops_label_order``), and a model whose label names differ from ``labels`` is an error naming
    both. To train (``train=True``) the head is laid out in ``labels`` order.

    A soft-prompt adapter folder loads its base model, then the adapter (and its trained head). Weights
    the checkpoint lacked (a fresh head, a BERT pooler absent from MLM checkpoints) are listed in
    ``model.lmops_new_modules``: PEFT must train and save them, or a reload re-randomises them.
    """
    from lmops.models import load_tokenizer
    from lmops.tasks import calibration

    adapter_cfg = Path(base) / "adapter_config.json"
    if adapter_cfg.is_file():
        from peft import PeftModel

        ref = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        if (Path(base) / ref).is_dir():  # the base travels inside the registered folder (finetune._embed_base)
            ref = str(Path(base) / ref)
        model, _ = load_classifier(ref, labels, kind, train=True)  # the head lives in the adapter, saved in labels order
        peft = PeftModel.from_pretrained(model, base)
        peft.lmops_calibrator = calibration.Identity() if train else calibration.load(base)
        return peft, load_tokenizer(base)
    tokenizer = load_tokenizer(base)
    own = None if train else saved_labels(base)
    if own is not None and sorted(own) != sorted(labels):
        from lmops.errors import DataError

        raise DataError(f"model {base} predicts the labels {own}, but validate.labels is {labels}: score it with its own labels "
                        "(set validate.labels to them), or retrain it for the new label set")
    mapping = {} if own is not None else {"id2label": dict(enumerate(labels)), "label2id": {l: i for i, l in enumerate(labels)}}
    model, info = kind.auto_model().from_pretrained(
        base, num_labels=len(labels), **mapping, use_safetensors=True, trust_remote_code=False, output_loading_info=True,
    )
    if own is not None and own != list(labels):
        model.lmops_label_order = [own.index(l) for l in labels]  # logits column j is labels[j]
    model.lmops_new_modules = sorted({k.rsplit(".", 1)[0] for k in info["missing_keys"]})
    if kind.pools:  # a mean-pooled classifier (finetune.pooling, saved in its config) reads as it was trained
        from lmops.tasks.pooling import apply_pooling

        apply_pooling(model)
    # the calibrator fitted on its validation split (tasks/calibration.py) adjusts every prediction
    model.lmops_calibrator = calibration.Identity() if train else calibration.load(base)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def predict_logits(model, tokenizer, inputs: list, kind: TaskKind, labels: list[str], max_length: int, batch_size: int):
    """Logits per row: a [n, labels] tensor, or for token kinds a list of [words, labels] tensors."""
    import torch

    model.eval()
    fill = kind.fill_index(labels)
    order = getattr(model, "lmops_label_order", None)  # a model saved with another label order, read by name
    calibrator = getattr(model, "lmops_calibrator", None)
    reading = Reading.of(model)
    units: list = []
    pieces, plan = kind.windows(tokenizer, inputs, max_length)
    with torch.no_grad():
        for i in range(0, len(pieces), batch_size):
            batch = pieces[i : i + batch_size]
            enc = kind.encode(tokenizer, batch, max_length, reading)
            logits = model(**enc).logits.float()
            if order is not None:
                logits = logits[..., order]
            if calibrator is not None and calibrator.method != "none":
                logits = torch.as_tensor(calibrator.apply(logits.numpy()))
            units.extend(kind.batch_logits(enc, logits, batch, fill))
    return kind.stack(kind.join(units, plan), len(labels))


def ensemble_probs(members: list, inputs: list, labels: list[str], kind: TaskKind, batch_size: int = 64, temperature: float = 1.0):
    """Several classifiers as one: the mean over ``members`` ((folder, max_length) pairs, each read at its own length)
    of softmax(calibrated logits / temperature), a [n, labels] tensor. One member is loaded at a time."""
    import torch

    total = None
    for model_dir, max_length in members:
        model, tokenizer = load_classifier(str(model_dir), labels, kind)
        probs = torch.softmax(predict_logits(model, tokenizer, inputs, kind, labels, max_length, batch_size) / temperature, dim=-1)
        total = probs if total is None else total + probs
        del model
    return total / len(members)


def predict_labels(model, tokenizer, frame, labels: list[str], kind: TaskKind, max_length: int, batch_size: int) -> tuple[list[str], list[float]]:
    """Predicted label per row (NER: space-separated tags) and its confidence (NER: mean over words)."""
    logits = predict_logits(model, tokenizer, kind.inputs(frame), kind, labels, max_length, batch_size)
    return kind.decode(logits, labels)
