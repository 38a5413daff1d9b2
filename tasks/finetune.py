"""Fine-tune: sentence classification (finance sentiment) from a pretrained base.

Methods: ``full`` (all weights) or ``lora`` (PEFT adapters + a trained head). Early stopping on
validation macro-F1; class-weighted loss for imbalance. Outputs ``model/`` (a plain Hugging Face
model — LoRA merged in — with tokenizer, safetensors only), ``adapter/`` for LoRA runs,
``finetune.json`` and ``loss.png``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmops.config import FinetuneParams
from lmops.errors import UserError

# LoRA targets per architecture family (attention projections; the usual choice in the PEFT docs).
LORA_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
}


@dataclass
class FinetuneSummary:
    model_dir: str
    adapter_dir: str | None
    method: str
    base_model: str
    trainable_params: int
    total_params: int
    best_epoch: int
    val_macro_f1: float
    epochs_run: int
    seconds: float
    loss_plot: str | None = None
    history: list[dict] = field(default_factory=list)


def lora_targets(model_type: str, override: list[str] | None) -> list[str]:
    if override:
        return override
    if model_type not in LORA_TARGETS:
        raise UserError(
            f"no default LoRA target modules for model_type {model_type!r}; set finetune.lora.target_modules in params.yaml"
        )
    return LORA_TARGETS[model_type]


MERGEABLE = {"lora", "ia3"}


def peft_config(params: FinetuneParams, model):
    """The PEFT config for ``params.method``; freshly initialised modules are always trained and saved."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    fresh = new_module_names(model)
    common = {"task_type": TaskType.SEQ_CLS, "modules_to_save": fresh}
    if params.method == "lora":
        return LoraConfig(r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=params.lora.dropout,
                          target_modules=lora_targets(model.config.model_type, params.lora.target_modules), **common)
    if params.method == "ia3":
        return IA3Config(**common)  # target/feed-forward modules: PEFT's defaults for the architecture
    if params.method == "prefix":
        import inspect

        if "past_key_values" not in inspect.signature(model.forward).parameters:
            raise UserError(
                f"prefix tuning needs a model that accepts past key values; {model.config.model_type!r} here does not. "
                "Use finetune.method: prompt (soft prompts), lora or ia3 for this base"
            )
    cls = PromptTuningConfig if params.method == "prompt" else PrefixTuningConfig
    return cls(num_virtual_tokens=params.virtual_tokens, **common)


def new_module_names(model) -> list[str]:
    """Leaf modules (e.g. ``pooler.dense``, ``classifier``) whose weights were initialised fresh on load."""
    prefix = getattr(model, "base_model_prefix", "")
    names = set()
    for key in getattr(model, "lmops_new_modules", []):
        parts = key.split(".")
        if parts[0] == prefix and len(parts) > 1:
            parts = parts[1:]
        names.add(".".join(parts))
    return sorted(names)


def load_classifier(base: str, labels: list[str]):
    from transformers import AutoModelForSequenceClassification

    from tasks.tokenize import load_tokenizer

    adapter_cfg = Path(base) / "adapter_config.json"
    if adapter_cfg.is_file():
        # A soft-prompt adapter folder: load its base model, then the adapter (and its trained head).
        from peft import PeftModel

        ref = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        model, tokenizer = load_classifier(ref, labels)
        return PeftModel.from_pretrained(model, base), load_tokenizer(base)
    tokenizer = load_tokenizer(base)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        use_safetensors=True, trust_remote_code=False, output_loading_info=True,
    )
    # Weights the checkpoint lacked (classifier head, a BERT pooler absent from MLM checkpoints) are
    # freshly initialised: PEFT must train and save them, or a reload re-randomises them.
    model.lmops_new_modules = sorted({k.rsplit(".", 1)[0] for k in info["missing_keys"]})
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def encode(tokenizer, texts: list[str], max_length: int):
    return tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")


def predict_logits(model, tokenizer, texts: list[str], max_length: int, batch_size: int):
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = encode(tokenizer, texts[i : i + batch_size], max_length)
            out.append(model(**enc).logits.float())
    return torch.cat(out) if out else torch.zeros((0, model.config.num_labels))


def macro_f1(y_true: list[int], y_pred: list[int], n_labels: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=list(range(n_labels)), average="macro", zero_division=0))


def finetune(
    train_path: Path, val_path: Path, base: str, labels: list[str], params: FinetuneParams, seed: int, out_dir: Path, progress: bool = True
) -> FinetuneSummary:
    import numpy as np
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from tasks.plots import loss_curve

    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = pd.read_parquet(train_path)
    val = pd.read_parquet(val_path)
    label_id = {l: i for i, l in enumerate(labels)}
    y_train = np.array([label_id[l] for l in train["label"]])
    y_val = [label_id[l] for l in val["label"]]
    texts = train["text"].tolist()

    model, tokenizer = load_classifier(base, labels)
    total_params = sum(p.numel() for p in model.parameters())
    if params.method != "full":
        from peft import get_peft_model

        try:
            model = get_peft_model(model, peft_config(params, model))  # SEQ_CLS keeps the classifier head trainable and saved
        except ValueError as exc:
            raise UserError(f"finetune.method {params.method!r} does not support {model.config.model_type!r} here: {exc}") from exc
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)

    weight = None
    if params.class_weighting:
        counts = np.bincount(y_train, minlength=len(labels)).astype(float)
        weight = torch.tensor(len(y_train) / (len(labels) * np.maximum(counts, 1)), dtype=torch.float)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    steps_per_epoch = math.ceil(len(texts) / params.batch_size)
    total_steps = steps_per_epoch * params.epochs
    warmup = int(total_steps * params.warmup_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))
    )

    rng = np.random.default_rng(seed)
    history, train_pts, val_pts = [], [], []
    best_f1, best_epoch, best_state, stale = -1.0, 0, None, 0
    start = time.perf_counter()
    step = 0
    bar = tqdm(total=total_steps, desc=f"finetune ({params.method})", disable=not progress, unit="step", mininterval=2.0)
    epoch = 0
    for epoch in range(1, params.epochs + 1):
        model.train()
        order = rng.permutation(len(texts))
        epoch_loss = 0.0
        for i in range(0, len(order), params.batch_size):
            idx = order[i : i + params.batch_size]
            enc = encode(tokenizer, [texts[j] for j in idx], params.max_length)
            logits = model(**enc).logits
            loss = loss_fn(logits, torch.as_tensor(y_train[idx], dtype=torch.long))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            epoch_loss += float(loss.detach()) * len(idx)
            step += 1
            bar.update(1)
        epoch_loss /= len(texts)
        val_logits = predict_logits(model, tokenizer, val["text"].tolist(), params.max_length, 128)
        val_loss = float(loss_fn(val_logits, torch.as_tensor(y_val, dtype=torch.long))) if len(y_val) else float("nan")
        f1 = macro_f1(y_val, val_logits.argmax(-1).tolist(), len(labels))
        history.append({"epoch": epoch, "train_loss": round(epoch_loss, 4), "val_loss": round(val_loss, 4), "val_macro_f1": round(f1, 4)})
        train_pts.append((epoch, epoch_loss))
        val_pts.append((epoch, val_loss))
        bar.set_postfix(val_f1=f"{f1:.3f}")
        if f1 > best_f1:
            best_f1, best_epoch, stale = f1, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= params.patience:
                break
    bar.close()
    model.load_state_dict(best_state)

    adapter_dir = None
    model_dir = out_dir / "model"
    if params.method != "full":
        adapter_dir = out_dir / "adapter"
        model.save_pretrained(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
    if params.method in MERGEABLE or params.method == "full":
        if params.method in MERGEABLE:
            model = model.merge_and_unload()  # a plain model: serving needs no PEFT
        model.save_pretrained(model_dir, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
    else:
        # Soft prompts cannot be merged: the model folder is the adapter, which names its base model.
        shutil.copytree(adapter_dir, model_dir)
    plot = loss_curve({"train": train_pts, "validation": val_pts}, out_dir / "loss.png", f"fine-tuning loss ({params.method})", xlabel="epoch")
    summary = FinetuneSummary(
        model_dir=str(model_dir), adapter_dir=str(adapter_dir) if adapter_dir else None, method=params.method, base_model=base,
        trainable_params=n_trainable, total_params=total_params, best_epoch=best_epoch, val_macro_f1=round(best_f1, 4),
        epochs_run=epoch, seconds=round(time.perf_counter() - start, 1), loss_plot=str(plot), history=history,
    )
    (out_dir / "finetune.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary
