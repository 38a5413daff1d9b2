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
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

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
    temperature: float | None = None  # fitted on the validation split (finetune.calibration); None = not calibrated
    val_ece_raw: float | None = None  # validation ECE before and after the temperature
    val_ece: float | None = None
    val_select: float | None = None  # the best epoch's early-stopping score (finetune.select_on; NER: entity F1)
    best_weights: str = "trained"  # or "averaged": the saved weights are finetune.averaging's average
    train_rows: int | None = None  # rows one epoch draws from: training rows (windows), plus entity pairs (finetune.entity_auxiliary)
    linear_probe: dict | None = None  # finetune.linear_probe: the head's L2 strength and its validation macro-F1 before fine-tuning
    interpolation: dict | None = None  # finetune.interpolate: {"alpha": kept, "scores": {alpha: validation score}}
    soup: dict | None = None  # a soup (tasks/soup.py): its method, members, those kept, their validation scores, their start


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
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

    fresh = new_module_names(model)
    common = {"task_type": params.kind.peft_task_type(), "modules_to_save": fresh}
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


class SourceSampler:
    """The rows one epoch visits when the training data mixes sources.

    Source s gets a share ∝ ``weights[s] · rows(s)^alpha`` of the epoch's draws (temperature sampling, as
    multilingual models mix languages), so a small source is not drowned by a big one. Within a source rows
    are drawn without replacement, carried over from one epoch to the next: a down-weighted source still shows
    every row over enough epochs, and an up-weighted one repeats a row only after all of its rows were seen.
    With alpha 1 and no weights an epoch is a plain permutation (the single-source behaviour, draw for draw).
    """

    def __init__(self, sources, alpha: float, weights: dict[str, float], rng):
        import numpy as np

        sources = np.asarray(sources, dtype=object)
        self.names = sorted(set(sources.tolist()))
        unknown = sorted(set(weights) - set(self.names))
        if unknown:
            raise UserError(f"finetune.sampling.weights names {unknown}, not sources of the training split; its sources are {self.names}")
        self.n, self.rng = len(sources), rng
        self.rows = {name: np.flatnonzero(sources == name) for name in self.names}
        raw = np.array([weights.get(name, 1.0) * len(self.rows[name]) ** alpha for name in self.names], dtype=float)
        if raw.sum() <= 0:
            raise UserError(f"finetune.sampling.weights leaves no source to train on: give one of {self.names} a weight > 0")
        self.share = dict(zip(self.names, raw / raw.sum()))
        self.plain = alpha == 1.0 and all(weights.get(name, 1.0) == 1.0 for name in self.names)
        self._queue = {name: np.empty(0, dtype=np.int64) for name in self.names}

    def draws(self) -> dict[str, int]:
        """Rows per source in one epoch of ``n`` draws (largest remainders, so they sum to ``n``)."""
        import numpy as np

        exact = np.array([self.share[name] * self.n for name in self.names])
        k = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - k), kind="stable")[: self.n - int(k.sum())]:
            k[i] += 1
        return dict(zip(self.names, k.tolist()))

    def epoch(self):
        import numpy as np

        if self.plain:
            return self.rng.permutation(self.n)
        picked = []
        for name, k in self.draws().items():
            queue = self._queue[name]
            while len(queue) < k:
                queue = np.concatenate([queue, self.rows[name][self.rng.permutation(len(self.rows[name]))]])
            picked.append(queue[:k])
            self._queue[name] = queue[k:]
        order = np.concatenate(picked)
        return order[self.rng.permutation(len(order))]

    def row_weights(self):
        """How often each row is drawn per epoch, on average (class weights follow what training sees)."""
        import numpy as np

        w = np.zeros(self.n)
        for name, idx in self.rows.items():
            w[idx] = self.share[name] * self.n / len(idx)
        return w


def source_scores(kind, logits, targets: list, sources: list, labels: list[str], loss_fn) -> dict[str, float]:
    """The early-stopping score of each source's validation rows, scored alone."""
    import numpy as np

    sources = np.asarray(sources, dtype=object)
    out = {}
    for name in sorted(set(sources.tolist())):
        idx = np.flatnonzero(sources == name).tolist()
        out[str(name)] = kind.validation_score(kind.subset(logits, idx), [targets[i] for i in idx], labels, loss_fn)["select"]
    return out


def selection_score(pooled: float, by_source: dict[str, float], select_on: str) -> float:
    if select_on == "pooled" or len(by_source) < 2:
        return pooled
    values = list(by_source.values())
    return min(values) if select_on == "worst_source" else sum(values) / len(values)


def enable_casing(model, casing: str) -> None:
    """Record ``casing`` in the model's config (saved with it, read by every encoder of its inputs) and make sure the
    token-type embeddings have the second row it uses; a base with one row gets a copy of it, so training starts
    from the base's own behaviour."""
    import torch

    emb = getattr(getattr(model, "base_model", model), "embeddings", None)
    table = getattr(emb, "token_type_embeddings", None)
    if table is None:
        raise UserError(f"finetune.casing: {casing} needs token-type embeddings (BERT-style models); {model.config.model_type!r} has none: "
                        "set finetune.casing: none")
    if table.num_embeddings < 2:
        grown = torch.nn.Embedding(2, table.embedding_dim)
        with torch.no_grad():
            grown.weight.copy_(table.weight[:1].expand(2, -1))
        emb.token_type_embeddings = grown
        model.config.type_vocab_size = 2
    model.config.lmops_casing = casing
    # a PEFT method freezes the embeddings: list the table as a module to train and save, as a fresh head is
    prefix = getattr(model, "base_model_prefix", "")
    model.lmops_new_modules = sorted({*getattr(model, "lmops_new_modules", []), f"{prefix}.embeddings.token_type_embeddings"})


def mask_tokens(ids, tokenizer, share: float, generator):
    """``ids`` with each word piece replaced by the mask token (the unknown token where there is none) with
    probability ``share``; special tokens and padding stay."""
    import torch

    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids, dtype=ids.dtype))
    mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
    hit = (torch.rand(ids.shape, generator=generator) < share) & ~special
    return torch.where(hit, torch.full_like(ids, mask_id), ids)


def _scores(v: dict, by_source: dict, select: float) -> dict:
    """One epoch's validation scores as the history records them."""
    return {"val_loss": round(v["val_loss"], 4), "val_macro_f1": round(v["macro"], 4),
            **({"val_entity_f1": round(v["entity_f1"], 4)} if v.get("entity_f1") is not None else {}),
            **({"val_by_source": {k: round(x, 4) for k, x in by_source.items()}, "val_select": round(select, 4)} if by_source else {})}


_LAYER = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


def layer_groups(model, lr: float, decay: float) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups, each encoder layer at ``decay`` times the learning rate of the
    layer above it: the embeddings one step below layer 0, everything above the last layer (pooler, head) at ``lr``.
    ``decay`` 1: one group. A model whose parameter names number no layers cannot be decayed by layer."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay == 1.0:
        return [{"params": [p for _, p in trainable]}]
    depth = {n: int(m.group(1)) + 1 if (m := _LAYER.search(n)) else None for n, _ in trainable}
    numbered = [d for d in depth.values() if d is not None]
    if not numbered:
        raise UserError(f"finetune.layer_lr_decay {decay}: no numbered layers among the trainable parameters of {type(model).__name__}; "
                        "set finetune.layer_lr_decay: 1.0")
    top = max(numbered) + 1  # the head and anything else above the encoder
    groups: dict[int, list] = {}
    for n, p in trainable:
        d = depth[n] if depth[n] is not None else (0 if "embed" in n else top)
        groups.setdefault(d, []).append(p)
    return [{"params": ps, "lr": lr * decay ** (top - d)} for d, ps in sorted(groups.items())]


def warmup_linear(opt, warmup: int, total: int):
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at step ``total``."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))


def start_digest(model) -> str:
    """A digest of every weight of ``model`` (names, dtypes, shapes and bytes): equal for two runs exactly when they
    start from the same weights."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def initial_model(base: str, labels: list[str], kind, seed: int, init_seed: int | None = None):
    """(model, tokenizer) to fine-tune, the weights the base lacks drawn from ``init_seed`` where it is set; torch's
    random state then follows ``seed`` (dropout). Without it both come from ``seed``, one stream, as they always did."""
    import torch

    from lmops.tasks.predict import load_classifier

    torch.manual_seed(seed if init_seed is None else init_seed)
    loaded = load_classifier(base, labels, kind, train=True)
    if init_seed is not None:
        torch.manual_seed(seed)
    return loaded


def finetune(
    train_path: Path, val_path: Path, base: str, labels: list[str], params: FinetuneParams, seed: int, out_dir: Path, progress: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
) -> FinetuneSummary:
    """``on_epoch(epoch, validation score)`` after each epoch's validation (a sweep reports it; it may raise to stop)."""
    import numpy as np
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from lmops.kinds.base import Reading
    from lmops.tasks.plots import loss_curve
    from lmops.tasks.predict import predict_logits

    out_dir.mkdir(parents=True, exist_ok=True)
    train = pd.read_parquet(train_path)
    val = pd.read_parquet(val_path)
    kind = params.kind
    y_train, y_val = kind.targets(train, labels), kind.targets(val, labels)
    texts, val_inputs = kind.inputs(train), kind.inputs(val)

    model, tokenizer = initial_model(base, labels, kind, seed, params.init_seed)
    # what params say wins over what a fine-tuned base was saved with, and training reads the inputs as evaluation will
    if params.casing != "none":
        enable_casing(model, params.casing)
    elif getattr(model.config, "lmops_casing", None):
        model.config.lmops_casing = "none"
    if kind.pools:
        from lmops.tasks.pooling import set_pooling

        set_pooling(model, params.pooling)
    if params.entity_marker or getattr(model.config, "lmops_entity_marker", None):
        model.config.lmops_entity_marker = params.entity_marker
    reading = Reading.of(model)
    # what evaluation, the gate and `lmops evaluate MODEL` read the folder as, whatever params are current then
    model.config.lmops_task, model.config.lmops_max_length = kind.name, params.max_length
    # sentences longer than max_length become several training rows instead of losing their tail
    texts, y_train, origin = kind.training_windows(tokenizer, texts, y_train, labels, params.max_length)
    train_sources = (train["source"].to_numpy()[origin] if "source" in train else np.array(["all"] * len(texts), dtype=object))
    fitted = [train, val]  # what the weights are fitted or selected on: recorded beside them (tasks/seen.py)
    if params.entity_auxiliary != "none":
        for frame in ([train] if params.entity_auxiliary == "all" else []) + _auxiliary_frames(train_path, params.entity_auxiliary):
            fitted.append(frame)
            more, y_more, src_more = kind.auxiliary_pairs(frame, labels, tokenizer.sep_token)
            texts, y_train = list(texts) + more, list(y_train) + y_more
            train_sources = np.concatenate([np.asarray(train_sources, dtype=object), np.asarray(src_more, dtype=object)])
    rng = np.random.default_rng(seed)
    sampler = SourceSampler(train_sources, params.sampling.alpha, params.sampling.weights, rng)
    val_sources = val["source"].tolist() if "source" in val else []
    weight = None
    if params.class_weighting and kind.class_weighting:
        counts = np.bincount(y_train, weights=sampler.row_weights(), minlength=len(labels))  # as drawn, not as stored
        weight = torch.tensor(len(y_train) / (len(labels) * np.maximum(counts, 1)), dtype=torch.float)
    probed = None
    if params.linear_probe:  # the head fitted on the base's frozen features first (LP-FT: tasks/probe.py)
        from lmops.tasks.probe import probe

        probed = probe(model, tokenizer, kind, texts, y_train, val_inputs, y_val, len(labels), params.max_length, reading, weight)
    if params.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    # the base's encoder as training starts (after casing's resized table), for finetune.interpolate
    anchor = encoder_weights(model) if params.interpolate else None
    # the weights training starts from, saved in the config: models of one start may be averaged (tasks/soup.py)
    model.config.lmops_start = start_digest(model)
    total_params = sum(p.numel() for p in model.parameters())
    if params.method != "full":
        from peft import get_peft_model

        try:
            model = get_peft_model(model, peft_config(params, model))  # SEQ_CLS keeps the classifier head trainable and saved
        except ValueError as exc:
            raise UserError(f"finetune.method {params.method!r} does not support {model.config.model_type!r} here: {exc}") from exc
    if params.rdrop and not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        raise UserError(f"finetune.rdrop: {params.rdrop} makes two dropout draws of each batch agree, but {base} has no dropout "
                        "left on (every dropout probability is 0): set finetune.rdrop: 0")
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)

    loss_fn = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=-100)
    train_loss_fn = (torch.nn.CrossEntropyLoss(weight=weight, ignore_index=-100, label_smoothing=params.label_smoothing)
                     if params.label_smoothing else loss_fn)
    opt = torch.optim.AdamW(layer_groups(model, params.lr, params.layer_lr_decay), lr=params.lr, weight_decay=params.weight_decay)
    steps_per_epoch = math.ceil(len(texts) / params.batch_size)
    total_steps = steps_per_epoch * params.epochs
    sched = warmup_linear(opt, int(total_steps * params.warmup_ratio), total_steps)
    average = None
    if params.averaging.method == "ema":
        from lmops.tasks.averaging import WeightAverage, ema_decay

        average = WeightAverage(trainable, ema_decay(params.averaging.horizon_epochs, steps_per_epoch))

    def validate():
        """(selection score, validation scores, per-source scores) of the weights in the model now."""
        val_logits = predict_logits(model, tokenizer, val_inputs, kind, labels, params.max_length, 128)
        v = kind.validation_score(val_logits, y_val, labels, loss_fn)
        by_source = source_scores(kind, val_logits, y_val, val_sources, labels, loss_fn) if len(set(val_sources)) > 1 else {}
        return selection_score(v["select"], by_source, params.select_on), v, by_source

    lengths = np.array(kind.lengths(tokenizer, texts, params.max_length, reading)) if params.group_by_length else None
    masking = torch.Generator().manual_seed(seed)  # its own stream: finetune.token_mask leaves dropout's draws as they were
    history, train_pts, val_pts, avg_pts = [], [], [], []
    best_f1, best_epoch, best_state, stale, best_macro, best_entity, best_weights = -1.0, 0, None, 0, 0.0, None, "trained"
    start = time.perf_counter()
    step = 0
    bar = tqdm(total=total_steps, desc=f"finetune ({params.method})", disable=not progress, unit="step", mininterval=2.0)
    epoch = 0
    for epoch in range(1, params.epochs + 1):
        model.train()
        order = sampler.epoch()
        if params.group_by_length:
            order = length_grouped(order, lengths, params.batch_size, rng)
        epoch_loss, epoch_kl = 0.0, 0.0
        for i in range(0, len(order), params.batch_size):
            idx = order[i : i + params.batch_size]
            enc = kind.encode(tokenizer, [texts[j] for j in idx], params.max_length, reading)
            if params.token_mask:
                enc["input_ids"] = mask_tokens(enc["input_ids"], tokenizer, params.token_mask, masking)
            loss, fit, agreement = training_loss(model, enc, kind, train_loss_fn, [y_train[j] for j in idx], params.rdrop)
            if agreement is not None:
                epoch_kl += float(agreement.detach()) * len(idx)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if average is not None:
                average.update()
            epoch_loss += float(fit.detach()) * len(idx)  # the training loss curve stays cross-entropy, R-Drop or not
            step += 1
            bar.update(1)
        epoch_loss /= len(texts)
        f1, v, by_source = validate()
        val_loss, macro, entity_f1 = v["val_loss"], v["macro"], v.get("entity_f1")
        history.append({"epoch": epoch, "train_loss": round(epoch_loss, 4), **_scores(v, by_source, f1)})
        if params.rdrop:  # how far apart two dropout draws still predict, per training row
            history[-1]["train_dropout_kl"] = round(epoch_kl / len(texts), 5)
        weights = "trained"
        if average is not None:
            with average.applied():
                f1_avg, v_avg, by_source_avg = validate()
                history[-1]["averaged"] = _scores(v_avg, by_source_avg, f1_avg)
                avg_pts.append((epoch, v_avg["val_loss"]))
                # the average is this epoch's candidate (with "better", ties go to the trained weights)
                if params.averaging.choose == "averaged" or f1_avg > f1:
                    f1, weights, macro, entity_f1 = f1_avg, "averaged", v_avg["macro"], v_avg.get("entity_f1")
                    candidate = {k: t.detach().clone() for k, t in model.state_dict().items()}
        train_pts.append((epoch, epoch_loss))
        val_pts.append((epoch, val_loss))
        bar.set_postfix(val_f1=f"{f1:.3f}")
        if on_epoch:
            on_epoch(epoch, f1)
        if f1 > best_f1:
            best_f1, best_epoch, stale, best_macro, best_entity, best_weights = f1, epoch, 0, macro, entity_f1, weights
            best_state = candidate if weights == "averaged" else {k: t.detach().clone() for k, t in model.state_dict().items()}
        else:
            stale += 1
            if stale >= params.patience:
                break
    bar.close()
    model.load_state_dict(best_state)
    interpolation = None
    if anchor is not None:
        interpolation, chosen = interpolate(model, anchor, params.interpolate, validate, best_f1)
        if chosen is not None:  # weights between the trained and the base's won on validation
            best_f1, best_macro, best_entity = chosen[0], chosen[1]["macro"], chosen[1].get("entity_f1")
    calibrated = None
    if params.calibration != "none" and kind.calibrated:
        from lmops.tasks import calibration

        calibrated = calibration.fit(params.calibration, predict_logits(model, tokenizer, val_inputs, kind, labels, params.max_length, 128), y_val)

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
        # Soft prompts cannot be merged: the model folder is the adapter plus its base, so the registered version
        # still loads when the run folder (or pretraining output) it was trained from is pruned.
        shutil.copytree(adapter_dir, model_dir)
        _embed_base(model_dir, base, {"lmops_task": kind.name, "lmops_max_length": params.max_length})
    if calibrated:
        calibration.write(model_dir, *calibrated)
    from lmops.tasks import seen

    # a classifier trained further keeps what it saw before; a pretrained LM saw no labels (nor any eval text)
    seen.record(model_dir, fitted, inherit=[base] if Path(base).is_dir() else [])
    plot = loss_curve({"train": train_pts, "validation": val_pts, "validation, averaged weights": avg_pts}, out_dir / "loss.png", f"fine-tuning loss ({params.method})", xlabel="epoch")
    summary = FinetuneSummary(
        model_dir=str(model_dir), adapter_dir=str(adapter_dir) if adapter_dir else None, method=params.method, base_model=base,
        trainable_params=n_trainable, total_params=total_params, best_epoch=best_epoch, val_macro_f1=round(best_macro, 4),
        epochs_run=epoch, task=kind.name, val_entity_f1=round(best_entity, 4) if best_entity is not None else None, seconds=round(time.perf_counter() - start, 1), loss_plot=str(plot), history=history,
        temperature=calibrated[0].temperature if calibrated else None, val_ece_raw=calibrated[1]["ece"] if calibrated else None,
        val_ece=calibrated[2]["ece"] if calibrated else None, val_select=round(best_f1, 4), best_weights=best_weights,
        train_rows=len(texts), linear_probe=probed, interpolation=interpolation,
    )
    (out_dir / "finetune.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary


def training_loss(model, enc, kind, loss_fn, targets: list, rdrop: float = 0.0):
    """(what a training step descends, its cross-entropy part, R-Drop's agreement term or None). With ``rdrop`` the
    batch runs twice, under two dropout draws: the mean of their cross-entropies plus ``rdrop`` times
    :func:`symmetric_kl` between them."""
    if not rdrop:
        fit = kind.batch_loss(loss_fn, model(**enc).logits, enc, targets)
        return fit, fit, None
    first, target = kind.scored(model(**enc).logits, enc, targets)
    second = kind.scored(model(**enc).logits, enc, targets)[0]
    agreement = symmetric_kl(first, second, target)
    fit = (loss_fn(first, target) + loss_fn(second, target)) / 2
    return fit + rdrop * agreement, fit, agreement


def symmetric_kl(a, b, target):
    """R-Drop's agreement term: (KL(p_a ‖ p_b) + KL(p_b ‖ p_a)) / 2 between the softmaxes of two logit rows, summed
    over classes and averaged over the rows whose target is not -100 (0 when there are none)."""
    import torch

    keep = target != -100
    if not bool(keep.any()):
        return a.sum() * 0.0
    la, lb = torch.log_softmax(a[keep], -1), torch.log_softmax(b[keep], -1)
    return ((la.exp() * (la - lb)).sum(-1) + (lb.exp() * (lb - la)).sum(-1)).mean() / 2


def encoder_weights(model) -> dict:
    """Copies of the encoder's floating-point tensors (not the head's): what finetune.interpolate moves back towards."""
    prefix = model.base_model_prefix + "."
    return {k: t.detach().clone() for k, t in model.state_dict().items() if k.startswith(prefix) and t.is_floating_point()}


def mixed_weights(trained: dict, anchor: dict, alpha: float) -> dict:
    """``alpha · trained + (1 − alpha) · anchor`` for every tensor of the anchor (a partial state dict)."""
    return {k: alpha * trained[k] + (1 - alpha) * anchor[k] for k in anchor}


def interpolate(model, anchor: dict, alphas: list[float], validate: Callable, trained_score: float):
    """WiSE-FT (Wortsman et al., 2022): the encoder set to ``mixed_weights(trained, anchor, alpha)`` for each alpha,
    scored by ``validate()`` (its first value is the selection score); the model is left at the best, the trained
    weights on a tie. Returns ({"alpha", "scores"}, validate()'s result at the kept alpha, or None for the trained)."""
    trained = {k: t.detach().clone() for k, t in model.state_dict().items() if k in anchor}
    scores, best_alpha, best, chosen = {1.0: round(trained_score, 4)}, 1.0, trained_score, None
    for alpha in sorted(set(alphas), reverse=True):
        model.load_state_dict(mixed_weights(trained, anchor, alpha), strict=False)
        result = validate()
        scores[alpha] = round(result[0], 4)
        if result[0] > best:
            best_alpha, best, chosen = alpha, result[0], result
    model.load_state_dict(trained if best_alpha == 1.0 else mixed_weights(trained, anchor, best_alpha), strict=False)
    return {"alpha": best_alpha, "scores": scores}, chosen


def _auxiliary_frames(train_path: Path, mode: str) -> list:
    """The snapshot's auxiliary rows (beside its train split) for finetune.entity_auxiliary, if it has them."""
    import pandas as pd

    path = train_path.with_name("auxiliary.parquet")
    if path.is_file():
        return [pd.read_parquet(path)]
    if mode == "mixed":
        raise UserError(f"finetune.entity_auxiliary: mixed trains on {path}, which this snapshot does not have: set "
                        "ingest.sources[<the sentfin source>].mixed_entities: auxiliary and ingest again")
    return []


BASE_SUBDIR = "base"


def _embed_base(adapter_dir: Path, base: str, record: dict) -> None:
    """Copy a local base model into ``adapter_dir/base`` and point the adapter at it by that relative name, with
    ``record`` (what the folder is, as a fully fine-tuned model's config says it) in its config. A hub id stays a
    reference (the hub is its store)."""
    src = Path(base)
    if not src.is_dir():
        return
    dst = adapter_dir / BASE_SUBDIR
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.suffix in {".json", ".safetensors", ".txt", ".model"}:
            shutil.copy2(f, dst / f.name)
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = BASE_SUBDIR
    cfg_path.write_text(json.dumps(cfg, indent=2))
    base_cfg = dst / "config.json"
    if base_cfg.is_file():
        base_cfg.write_text(json.dumps(json.loads(base_cfg.read_text()) | record, indent=2))
