"""Distillation: one or more fine-tuned teachers (an ensemble when several: their calibrated probabilities averaged)
taught to a student made from the first teacher by keeping some of its transformer layers, so the monitor pays for
one small model.

Student = teacher[0] with ``distill.layers`` kept (default every other layer: 6 → 3 for MiniLM), its embeddings,
head and tokenizer unchanged. Loss per labeled row: ``alpha · T² · KL(teacher_T ‖ student_T) + (1 − alpha) · CE``;
rows of the pretraining corpus (``distill.unlabeled_rows``) add the KL term alone. Early stopping on validation
macro-F1 and the calibration are finetune's. Outputs ``model/`` (a plain Hugging Face model folder,
like finetune's) and ``distill.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lmops.config import DistillParams, FinetuneParams
from lmops.errors import UserError
from lmops.tasks import seen

if TYPE_CHECKING:
    from lmops.tasks.finetune import FinetuneSummary


@dataclass
class DistillSummary:
    model_dir: str
    teachers: list[str]
    layers_kept: list[int]
    teacher_layers: int
    student_params: int
    teacher_params: int
    labeled_rows: int
    unlabeled_rows: int
    best_epoch: int
    val_macro_f1: float
    teacher_val_macro_f1: float  # the (ensemble) teacher on the same validation rows
    seconds: float
    temperature: float | None = None
    val_ece: float | None = None
    history: list[dict] = field(default_factory=list)
    loss_plot: str | None = None
    epochs_run: int = 0

    def as_candidate(self, teacher) -> "FinetuneSummary":
        """The student as the pipeline's fine-tuned model (what evaluate, gate and register read)."""
        from lmops.tasks.finetune import FinetuneSummary

        return FinetuneSummary(
            model_dir=self.model_dir, adapter_dir=None, method=f"{teacher.method}+distill", base_model=teacher.model_dir,
            trainable_params=self.student_params, total_params=self.student_params, best_epoch=self.best_epoch,
            val_macro_f1=self.val_macro_f1, epochs_run=self.epochs_run, seconds=self.seconds, task=teacher.task, loss_plot=self.loss_plot,
            history=self.history, temperature=self.temperature, val_ece=self.val_ece)


def shrink(model, keep: list[int]):
    """Keep only the encoder layers ``keep`` (in that order) of a BERT-style model; the rest of it is unchanged."""
    import torch

    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UserError(f"distillation keeps encoder layers of BERT-style models; {model.config.model_type!r} has no encoder.layer list")
    bad = [i for i in keep if not 0 <= i < len(layers)]
    if bad or not keep:
        raise UserError(f"distill.layers {keep}: the teacher has layers 0..{len(layers) - 1}")
    base.encoder.layer = torch.nn.ModuleList([layers[i] for i in keep])
    model.config.num_hidden_layers = len(keep)
    return model


def teacher_probs(teachers: list[str], inputs: list, labels: list[str], ft: FinetuneParams, temperature: float, batch_size: int = 64):
    """Mean over the teachers of softmax(calibrated logits / temperature): [n, labels]."""
    from lmops.tasks.predict import ensemble_probs

    return ensemble_probs([(ref, ft.max_length) for ref in teachers], inputs, labels, ft.kind, batch_size, temperature)


def distill(teachers: list[str], train_path: Path, val_path: Path, corpus_path: Path | None, labels: list[str], params: DistillParams,
            ft: FinetuneParams, seed: int, out_dir: Path, progress: bool = True) -> DistillSummary:
    import numpy as np
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from lmops.kinds.base import Reading
    from lmops.metrics import macro_f1
    from lmops.tasks.finetune import warmup_linear
    from lmops.tasks.predict import load_classifier, predict_logits

    kind = ft.kind
    if not kind.calibrated:
        raise UserError(f"distillation needs one label per row; finetune.task {kind.name!r} predicts per token")
    torch.manual_seed(seed)
    seen.require_held_out(teachers, val_path.with_name("test.parquet"), "teacher", "student")
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val = pd.read_parquet(train_path), pd.read_parquet(val_path)
    texts, y = kind.inputs(train), list(kind.targets(train, labels))
    val_inputs, y_val = kind.inputs(val), kind.targets(val, labels)
    extra: list = []
    if params.unlabeled_rows and corpus_path is not None and kind.text_inputs:
        corpus = pd.read_parquet(corpus_path, columns=["text"])["text"]
        known = set(train["text"])
        pool = [t for t in corpus if t not in known]  # the labeled train texts are in the corpus too
        rng = np.random.default_rng(seed)
        extra = [pool[i] for i in sorted(rng.choice(len(pool), min(params.unlabeled_rows, len(pool)), replace=False))]
    inputs = texts + extra
    targets = y + [-100] * len(extra)
    start = time.perf_counter()
    soft = teacher_probs(teachers, inputs, labels, ft, params.temperature)
    teacher_f1 = macro_f1(list(y_val), teacher_probs(teachers, val_inputs, labels, ft, 1.0).argmax(-1).tolist(), len(labels))

    model, tokenizer = load_classifier(teachers[0], labels, kind)
    teacher_params = sum(p.numel() for p in model.parameters())
    n_layers = model.config.num_hidden_layers
    keep = params.layers or list(range(0, n_layers, 2))
    model = shrink(model, keep)
    model.lmops_calibrator = None  # the student is calibrated on its own below
    model.config.lmops_task, model.config.lmops_max_length = kind.name, ft.max_length
    student_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=ft.weight_decay)
    steps = math.ceil(len(inputs) / params.batch_size) * params.epochs
    sched = warmup_linear(opt, int(steps * ft.warmup_ratio), steps)
    ce = torch.nn.CrossEntropyLoss(ignore_index=-100)
    t2 = params.temperature ** 2
    rng = np.random.default_rng(seed)
    reading = Reading.of(model)  # the student reads its inputs as its first teacher did (its config is a copy)
    best, best_epoch, best_state, stale, history = -1.0, 0, None, 0, []
    bar = tqdm(total=steps, desc=f"distill ({len(keep)} of {n_layers} layers)", disable=not progress, unit="step", mininterval=2.0)
    for epoch in range(1, params.epochs + 1):
        model.train()
        order = rng.permutation(len(inputs))
        total = 0.0
        for i in range(0, len(order), params.batch_size):
            idx = order[i : i + params.batch_size]
            enc = kind.encode(tokenizer, [inputs[j] for j in idx], ft.max_length, reading)
            logits = model(**enc).logits
            kl = torch.nn.functional.kl_div(torch.log_softmax(logits / params.temperature, -1), soft[torch.as_tensor(idx)], reduction="batchmean") * t2
            target = torch.tensor([targets[j] for j in idx])
            hard = ce(logits, target) if (target >= 0).any() else logits.sum() * 0
            loss = params.alpha * kl + (1 - params.alpha) * hard
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            total += float(loss.detach()) * len(idx)
            bar.update(1)
        val_logits = predict_logits(model, tokenizer, val_inputs, kind, labels, ft.max_length, 128)
        f1 = macro_f1(list(y_val), val_logits.argmax(-1).tolist(), len(labels))
        history.append({"epoch": epoch, "train_loss": round(total / len(inputs), 4), "val_macro_f1": round(f1, 4)})
        bar.set_postfix(val_f1=f"{f1:.3f}")
        if f1 > best:
            best, best_epoch, stale = f1, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= ft.patience:
                break
    bar.close()
    model.load_state_dict(best_state)
    calibrated = None
    if ft.calibration != "none":
        from lmops.tasks import calibration

        calibrated = calibration.fit(ft.calibration, predict_logits(model, tokenizer, val_inputs, kind, labels, ft.max_length, 128), y_val)
    from lmops.tasks.plots import loss_curve

    plot = loss_curve({"train": [(h["epoch"], h["train_loss"]) for h in history]}, out_dir / "loss.png",
                      f"distillation loss ({len(keep)} of {n_layers} layers)", xlabel="epoch")
    model_dir = out_dir / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    if calibrated:
        calibration.write(model_dir, *calibrated)
    # the teachers' soft labels carry what they were fitted on into the student
    seen.record(model_dir, [train, val], inherit=teachers)
    summary = DistillSummary(
        model_dir=str(model_dir), teachers=[str(t) for t in teachers], layers_kept=keep, teacher_layers=n_layers, student_params=student_params,
        teacher_params=teacher_params, labeled_rows=len(texts), unlabeled_rows=len(extra), best_epoch=best_epoch, val_macro_f1=round(best, 4),
        teacher_val_macro_f1=round(teacher_f1, 4), seconds=round(time.perf_counter() - start, 1),
        temperature=calibrated[0].temperature if calibrated else None, val_ece=calibrated[2]["ece"] if calibrated else None, history=history,
        loss_plot=str(plot), epochs_run=len(history))
    (out_dir / "distill.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary

