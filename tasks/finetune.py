"""Fine-tune: sentence classification (finance sentiment), entity-targeted sentiment (entity, text)
pairs, or token classification (NER, labels aligned to the first sub-token of each word).

Methods: ``full`` (all weights) or PEFT (``lora``/``ia3``/``prompt``/``prefix``: adapters + a trained
head). Early stopping on validation macro-F1 (NER: entity-level micro F1); class-weighted loss for
imbalance (sequence tasks). Outputs ``model/`` (a plain Hugging Face
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
    task: str = "sequence"
    val_entity_f1: float | None = None  # NER: seqeval micro F1 over entities, the early-stopping metric
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
    kind = TaskType.TOKEN_CLS if params.task == "token" else TaskType.SEQ_CLS
    common = {"task_type": kind, "modules_to_save": fresh}
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


def load_classifier(base: str, labels: list[str], task: str = "sequence"):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from tasks.tokenize import load_tokenizer

    adapter_cfg = Path(base) / "adapter_config.json"
    if adapter_cfg.is_file():
        # A soft-prompt adapter folder: load its base model, then the adapter (and its trained head).
        from peft import PeftModel

        ref = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        model, tokenizer = load_classifier(ref, labels, task)
        return PeftModel.from_pretrained(model, base), load_tokenizer(base)
    tokenizer = load_tokenizer(base)
    auto = AutoModelForTokenClassification if task == "token" else AutoModelForSequenceClassification
    model, info = auto.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        use_safetensors=True, trust_remote_code=False, output_loading_info=True,
    )
    # Weights the checkpoint lacked (classifier head, a BERT pooler absent from MLM checkpoints) are
    # freshly initialised: PEFT must train and save them, or a reload re-randomises them.
    model.lmops_new_modules = sorted({k.rsplit(".", 1)[0] for k in info["missing_keys"]})
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def task_inputs(frame, task: str = "sequence") -> list:
    """Model inputs of a labeled frame: texts; (entity, text) pairs; or word lists (NER)."""
    if task == "entity":
        return [(next(iter(json.loads(e))), t) for e, t in zip(frame["entities"], frame["text"])]
    if task == "token":
        return [t.split(" ") for t in frame["text"]]
    return frame["text"].tolist()


def task_targets(frame, labels: list[str], task: str = "sequence") -> list:
    """Label ids per row (NER: a list of tag ids per sentence)."""
    index = {l: i for i, l in enumerate(labels)}
    if task == "token":
        return [[index[t] for t in tags.split(" ")] for tags in frame["label"]]
    return [index[l] for l in frame["label"]]


def encode(tokenizer, inputs: list, max_length: int, task: str = "sequence"):
    kw = dict(max_length=max_length, padding=True, return_tensors="pt")
    if task == "entity":
        # [CLS] entity [SEP] headline [SEP]: the headline is cut, never the entity
        return tokenizer([e for e, _ in inputs], [t for _, t in inputs], truncation="only_second", **kw)
    if task == "token":
        return tokenizer(inputs, is_split_into_words=True, truncation=True, **kw)
    return tokenizer(inputs, truncation=True, **kw)


def align_tags(enc, tag_ids: list[list[int]]):
    """Sub-token labels: a word's tag on its first sub-token, -100 (ignored) on the rest and on specials."""
    import torch

    out = torch.full(enc["input_ids"].shape, -100, dtype=torch.long)
    for i, tags in enumerate(tag_ids):
        prev = None
        for pos, w in enumerate(enc.word_ids(i)):
            if w is not None and w != prev:
                out[i, pos] = tags[w]
            prev = w
    return out


def _per_word(enc, logits, n_words: list[int], fill: int):
    """Per-word logits from the first sub-token of each word; words cut by max_length get ``fill``."""
    import torch

    rows = []
    for i, n in enumerate(n_words):
        word = torch.zeros((n, logits.shape[-1]))
        word[:, fill] = 1.0
        prev = None
        for pos, w in enumerate(enc.word_ids(i)):
            if w is not None and w != prev:
                word[w] = logits[i, pos]
            prev = w
        rows.append(word)
    return rows


def predict_logits(model, tokenizer, inputs: list, max_length: int, batch_size: int, task: str = "sequence", fill: int = 0):
    """Logits [n, labels]; for NER a list of [words, labels] tensors (``fill`` = tag id for truncated words)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(inputs), batch_size):
            batch = inputs[i : i + batch_size]
            enc = encode(tokenizer, batch, max_length, task)
            logits = model(**enc).logits.float()
            if task == "token":
                out.extend(_per_word(enc, logits, [len(w) for w in batch], fill))
            else:
                out.append(logits)
    if task == "token":
        return out
    return torch.cat(out) if out else torch.zeros((0, model.config.num_labels))


def outside_index(labels: list[str]) -> int:
    return labels.index("O") if "O" in labels else 0


def predict_labels(model, tokenizer, frame, labels: list[str], task: str, max_length: int, batch_size: int) -> tuple[list[str], list[float]]:
    """Predicted label per row (NER: space-separated tags) and its confidence (NER: mean over words)."""
    logits = predict_logits(model, tokenizer, task_inputs(frame, task), max_length, batch_size, task, outside_index(labels))
    if task == "token":
        probs = [l.softmax(-1) for l in logits]
        return ([" ".join(labels[j] for j in p.argmax(-1).tolist()) for p in probs],
                [float(p.max(-1).values.mean()) if len(p) else 1.0 for p in probs])
    probs = logits.softmax(-1)
    return [labels[j] for j in probs.argmax(-1).tolist()], probs.max(-1).values.tolist()


def length_grouped(order, lengths, batch_size: int, rng, window: int = 50):
    """A shuffled order whose batches hold texts of similar length: sort within windows of
    ``window`` batches, then shuffle the batches (as HF Trainer's group_by_length does)."""
    import numpy as np

    span = batch_size * window
    batches = []
    for i in range(0, len(order), span):
        chunk = order[i : i + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    return np.concatenate([batches[k] for k in rng.permutation(len(batches))]) if batches else order


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
    task = params.task
    y_train = task_targets(train, labels, task)
    y_val = task_targets(val, labels, task)
    texts = task_inputs(train, task)
    val_inputs = task_inputs(val, task)
    if task != "token":
        y_train = np.array(y_train)

    model, tokenizer = load_classifier(base, labels, task)
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
    if params.class_weighting and task != "token":  # NER: "O" dominates; weighting it down costs precision
        counts = np.bincount(y_train, minlength=len(labels)).astype(float)
        weight = torch.tensor(len(y_train) / (len(labels) * np.maximum(counts, 1)), dtype=torch.float)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=-100)
    opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    steps_per_epoch = math.ceil(len(texts) / params.batch_size)
    total_steps = steps_per_epoch * params.epochs
    warmup = int(total_steps * params.warmup_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))
    )

    rng = np.random.default_rng(seed)
    lengths = np.array([len(x) if isinstance(x, list) else len(str(x)) for x in texts])
    history, train_pts, val_pts = [], [], []
    best_f1, best_epoch, best_state, stale, best_macro, best_entity = -1.0, 0, None, 0, 0.0, None
    start = time.perf_counter()
    step = 0
    bar = tqdm(total=total_steps, desc=f"finetune ({params.method})", disable=not progress, unit="step", mininterval=2.0)
    epoch = 0
    for epoch in range(1, params.epochs + 1):
        model.train()
        order = rng.permutation(len(texts))
        if params.group_by_length:
            order = length_grouped(order, lengths, params.batch_size, rng)
        epoch_loss = 0.0
        for i in range(0, len(order), params.batch_size):
            idx = order[i : i + params.batch_size]
            enc = encode(tokenizer, [texts[j] for j in idx], params.max_length, task)
            logits = model(**enc).logits
            if task == "token":
                loss = loss_fn(logits.flatten(0, 1), align_tags(enc, [y_train[j] for j in idx]).flatten())
            else:
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
        val_logits = predict_logits(model, tokenizer, val_inputs, params.max_length, 128, task, outside_index(labels))
        entity_f1 = None
        if task == "token":
            flat = torch.cat(val_logits) if val_logits else torch.zeros((0, len(labels)))
            gold = [t for tags in y_val for t in tags]
            val_loss = float(loss_fn(flat, torch.as_tensor(gold, dtype=torch.long))) if gold else float("nan")
            from tasks.evaluate import seqeval_scores

            scores = seqeval_scores(y_val, [l.argmax(-1).tolist() for l in val_logits], labels)
            entity_f1, macro = scores["micro_f1"], scores["macro_f1"]
            f1 = entity_f1  # entity-level micro F1 is the usual NER selection metric; rare types make macro noisy
        else:
            val_loss = float(loss_fn(val_logits, torch.as_tensor(y_val, dtype=torch.long))) if len(y_val) else float("nan")
            f1 = macro = macro_f1(y_val, val_logits.argmax(-1).tolist(), len(labels))
        history.append({"epoch": epoch, "train_loss": round(epoch_loss, 4), "val_loss": round(val_loss, 4), "val_macro_f1": round(macro, 4),
                        **({"val_entity_f1": round(entity_f1, 4)} if entity_f1 is not None else {})})
        train_pts.append((epoch, epoch_loss))
        val_pts.append((epoch, val_loss))
        bar.set_postfix(val_f1=f"{f1:.3f}")
        if f1 > best_f1:
            best_f1, best_epoch, stale, best_macro, best_entity = f1, epoch, 0, macro, entity_f1
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
        trainable_params=n_trainable, total_params=total_params, best_epoch=best_epoch, val_macro_f1=round(best_macro, 4),
        epochs_run=epoch, task=task, val_entity_f1=round(best_entity, 4) if best_entity is not None else None, seconds=round(time.perf_counter() - start, 1), loss_plot=str(plot), history=history,
    )
    (out_dir / "finetune.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary
