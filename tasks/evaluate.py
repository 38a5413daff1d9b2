"""Evaluate: score a classifier on a labeled split through the project's local `evaluate` modules.

Sequence and entity tasks: a classification report (sklearn layout). Token task (NER): seqeval's
entity-level report, token accuracy, and a tag-level confusion matrix.

Outputs ``metrics.json`` (flat headline metrics + full report), ``report.md`` (a readable
classification report), ``confusion.png`` and ``predictions.parquet``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class EvalResult:
    accuracy: float
    macro_f1: float
    weighted_f1: float
    micro_f1: float
    ece: float
    n: int
    metrics_path: str
    report_path: str
    confusion_plot: str
    predictions_path: str
    report: dict[str, Any]
    task: str = "sequence"

    def headline(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "weighted_f1": self.weighted_f1, "micro_f1": self.micro_f1}

    def extra(self) -> dict[str, float]:
        return {"ece": self.ece, **{f"slice.{k}.macro_f1": v["macro_f1"] for k, v in (self.report.get("slices") or {}).items()}}


def classification_report(predictions: list[int], references: list[int], labels: list[str]) -> dict[str, Any]:
    import evaluate

    from lmops.metrics import metric_path

    metric = evaluate.load(metric_path("classification_report"))
    return metric.compute(predictions=predictions, references=references, labels=labels)


def seqeval_scores(refs: list[list[int]], preds: list[list[int]], labels: list[str]) -> dict[str, Any]:
    """Entity-level NER report from tag ids (``labels`` maps ids to IOB2 tags)."""
    import evaluate

    from lmops.metrics import metric_path

    return evaluate.load(metric_path("seqeval_report")).compute(
        predictions=[[labels[j] for j in p] for p in preds], references=[[labels[j] for j in r] for r in refs])


def calibration(probs, refs: list[int]) -> dict[str, Any]:
    import evaluate

    from lmops.metrics import metric_path

    conf = probs.max(-1).values.tolist()
    correct = [int(p == r) for p, r in zip(probs.argmax(-1).tolist(), refs)]
    return evaluate.load(metric_path("calibration")).compute(confidences=conf, correct=correct)


def bootstrap_diff(refs: list[int], pred_a: list[int], pred_b: list[int], labels: list[str], n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap over test rows: (b − a) for accuracy and macro-F1 with a 95% interval."""
    import numpy as np
    from sklearn.metrics import f1_score

    y, a, b = (np.asarray(v) for v in (refs, pred_a, pred_b))
    ids = list(range(len(labels)))

    def scores(idx):
        return (float((b[idx] == y[idx]).mean() - (a[idx] == y[idx]).mean()),
                float(f1_score(y[idx], b[idx], labels=ids, average="macro", zero_division=0) - f1_score(y[idx], a[idx], labels=ids, average="macro", zero_division=0)))

    rng = np.random.default_rng(seed)
    draws = np.array([scores(rng.integers(0, len(y), len(y))) for _ in range(n)])
    point = scores(np.arange(len(y)))
    out = {}
    for j, name in enumerate(("accuracy", "macro_f1")):
        lo, hi = np.percentile(draws[:, j], [2.5, 97.5])
        out[name] = {"diff": round(point[j], 4), "ci95": [round(float(lo), 4), round(float(hi), 4)], "p_b_not_better": round(float((draws[:, j] <= 0).mean()), 4)}
    out["n_test"], out["n_bootstrap"] = len(y), n
    return out


def bootstrap_diff_entities(refs: list[list[str]], pred_a: list[list[str]], pred_b: list[list[str]], n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """NER: paired bootstrap over sentences of (b − a) for entity micro-F1 (seqeval's exact spans) and token
    accuracy, with 95% intervals. Sentences are resampled whole, so the spans inside one stay together."""
    import numpy as np
    from seqeval.metrics.sequence_labeling import get_entities

    def counts(pred: list[list[str]]) -> np.ndarray:  # per sentence: true positives, predicted, gold, correct tags, tags
        rows = []
        for r, p in zip(refs, pred):
            gold, found = set(get_entities(r)), set(get_entities(p))
            rows.append((len(gold & found), len(found), len(gold), sum(x == y for x, y in zip(r, p)), len(r)))
        return np.asarray(rows, dtype=np.float64).reshape(-1, 5)

    ca, cb = counts(pred_a), counts(pred_b)

    def scores(idx) -> tuple[float, float]:
        out = []
        for c in (cb, ca):
            tp, found, gold, right, tags = c[idx].sum(0)
            out.append((2 * tp / (found + gold) if found + gold else 0.0, right / tags if tags else 0.0))
        return out[0][0] - out[1][0], out[0][1] - out[1][1]

    rng = np.random.default_rng(seed)
    draws = np.array([scores(rng.integers(0, len(refs), len(refs))) for _ in range(n)])
    point = scores(np.arange(len(refs)))
    out: dict[str, Any] = {}
    for j, name in enumerate(("micro_f1", "accuracy")):
        lo, hi = np.percentile(draws[:, j], [2.5, 97.5])
        out[name] = {"diff": round(point[j], 4), "ci95": [round(float(lo), 4), round(float(hi), 4)], "p_b_not_better": round(float((draws[:, j] <= 0).mean()), 4)}
    out["n_test"], out["n_bootstrap"], out["unit"] = len(refs), n, "sentence"
    return out


def report_markdown(report: dict[str, Any], labels: list[str], title: str) -> str:
    ner = report.get("task") == "token"
    n = report.get("n", sum(c["support"] for c in report["per_class"].values()))
    if ner:
        head = (f"entity-level (seqeval, exact spans): micro-F1 **{report['micro_f1']:.4f}** · macro-F1 **{report['macro_f1']:.4f}** · "
                f"token accuracy {report['accuracy']:.4f} · sentences = {n}")
    else:
        head = f"accuracy **{report['accuracy']:.4f}** · macro-F1 **{report['macro_f1']:.4f}** · n = {n}"
    lines = [f"# {title}", "", head, ""]
    lines += [f"| {'entity type' if ner else 'class'} | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
    for name in report["per_class"]:
        c = report["per_class"][name]
        lines.append(f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |")
    for avg in ("micro", "macro", "weighted"):
        a = report["averages"][avg]
        lines.append(f"| *{avg} avg* | {a['precision']:.4f} | {a['recall']:.4f} | {a['f1']:.4f} | |")
    lines += ["", f"Expected calibration error (10 bins): **{report.get('ece', float('nan')):.4f}**"]
    for name, sl in (report.get("slices") or {}).items():
        lines.append(f"- slice `{name}`: n = {sl['n']}, accuracy {sl['accuracy']:.4f}, macro-F1 {sl['macro_f1']:.4f}")
    lines += ["", ("Tag-level c" if ner else "C") + "onfusion matrix (rows = true, columns = predicted): " + ", ".join(labels), ""]
    for name, row in zip(labels, report["confusion_matrix"]):
        lines.append(f"- {name}: {row}")
    return "\n".join(lines) + "\n"


def evaluate_model(model_dir: Path, data_path: Path, labels: list[str], max_length: int, batch_size: int, out_dir: Path,
                   title: str = "Evaluation", task: str = "sequence") -> EvalResult:
    import pandas as pd
    import torch

    from tasks.finetune import load_classifier, outside_index, predict_logits, task_inputs, task_targets
    from tasks.plots import confusion_matrix

    out_dir.mkdir(parents=True, exist_ok=True)
    data = pd.read_parquet(data_path)
    seen = set(data["label"].str.split().explode()) if task == "token" else set(data["label"])
    unknown = sorted(seen - set(labels))
    if unknown:
        from lmops.errors import DataError

        raise DataError(f"{data_path}: labels {unknown} are not in the model's label set {labels}")
    model, tokenizer = load_classifier(str(model_dir), labels, task)
    logits = predict_logits(model, tokenizer, task_inputs(data, task), max_length, batch_size, task, outside_index(labels))
    refs = task_targets(data, labels, task)
    if task == "token":
        preds = [l.argmax(-1).tolist() for l in logits]
        report = seqeval_scores(refs, preds, labels)
        flat_probs = torch.cat(logits).softmax(-1) if logits else torch.zeros((0, len(labels)))
        flat_refs = [t for r in refs for t in r]
        from sklearn.metrics import confusion_matrix as sk_confusion

        report["confusion_matrix"] = sk_confusion(flat_refs, flat_probs.argmax(-1).tolist(), labels=list(range(len(labels)))).tolist()
        report["calibration"] = calibration(flat_probs, flat_refs)  # per word
        score = lambda idx: seqeval_scores([refs[i] for i in idx], [preds[i] for i in idx], labels)  # noqa: E731
        pred_text = [" ".join(labels[j] for j in p) for p in preds]
        confidence = [float(l.softmax(-1).max(-1).values.mean()) if len(l) else 1.0 for l in logits]
    else:
        probs = logits.softmax(-1)
        preds = probs.argmax(-1).tolist()
        report = classification_report(preds, refs, labels)
        report["calibration"] = calibration(probs, refs)
        score = lambda idx: classification_report([preds[i] for i in idx], [refs[i] for i in idx], labels)  # noqa: E731
        pred_text = [labels[p] for p in preds]
        confidence = probs.max(-1).values.tolist()
    report["task"], report["n"] = task, len(refs)
    report["ece"] = report["calibration"]["ece"]
    # Per-slice metrics: one report per source (e.g. each dataset a model is scored on).
    report["slices"] = {}
    if "source" in data and data["source"].nunique() > 1:
        for name, idx in data.groupby("source").indices.items():
            sub = score(list(idx))
            report["slices"][str(name)] = {"n": len(idx), "accuracy": sub["accuracy"], "macro_f1": sub["macro_f1"], "micro_f1": sub["micro_f1"]}

    pd.DataFrame({"id": data["id"], "label": data["label"], "prediction": pred_text,
                  "confidence": confidence}).to_parquet(out_dir / "predictions.parquet", index=False)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(report_markdown(report, labels, title))
    plot = confusion_matrix(report["confusion_matrix"], labels, out_dir / "confusion.png", title)
    return EvalResult(
        accuracy=round(report["accuracy"], 6), macro_f1=round(report["macro_f1"], 6), weighted_f1=round(report["weighted_f1"], 6),
        micro_f1=round(report["micro_f1"], 6), ece=round(report["ece"], 6), n=len(refs), metrics_path=str(out_dir / "metrics.json"),
        report_path=str(out_dir / "report.md"), confusion_plot=str(plot), predictions_path=str(out_dir / "predictions.parquet"),
        report=report, task=task,
    )


def _format_of(path: Path, default: str) -> str:
    """The ingest format a user's ``--data`` file is read with, from its suffixes (``.csv.gz`` too)."""
    if not path.exists():
        from lmops.errors import UserError

        raise UserError(f"--data {path} does not exist")
    suffixes = "".join(path.suffixes).lower()
    if ".json" in suffixes:
        return "jsonl"
    if ".parquet" in suffixes:
        return "parquet"
    if ".csv" in suffixes or ".tsv" in suffixes:
        return "csv"
    return "text_dir" if path.is_dir() else default


def load_labeled_file(path: Path, params, out_dir: Path) -> Path:
    """Bring a user's labeled file through the same ingest rules (normalization, quarantine, label map)."""
    import pandas as pd

    from lmops.config import IngestParams, SourceParams
    from lmops.errors import DataError
    from tasks.ingest import ingest_labeled_only

    task = params.finetune.task
    fmt = _format_of(path, default="csv")
    if task == "token":
        fmt = "conll"  # NER files are CoNLL columns whatever their suffix
    elif task == "entity":
        fmt = "sentfin"  # entity labels come as SEntFiN's Title + Decisions columns
    src = SourceParams(name=path.stem, role="labeled", format=fmt, path=str(path))
    frame, summary = ingest_labeled_only(IngestParams(sources=[src], min_chars=params.ingest.min_chars, max_chars=params.ingest.max_chars),
                                         params.validate_.labels, out_dir, task)
    if frame.empty:
        raise DataError(f"{path}: no usable labeled rows; see {out_dir / 'quarantine.parquet'}")
    out = out_dir / "eval.parquet"
    frame.to_parquet(out, index=False)
    return out


def load_text_file(path: Path, out_dir: Path) -> Path:
    """Any text file or folder through the corpus ingest rules (normalization, quarantine), for LM evaluation."""
    from lmops.config import IngestParams, SourceParams
    from lmops.errors import DataError
    from tasks.ingest import ingest_corpus_only

    src = SourceParams(name=path.stem, role="unlabeled", format=_format_of(path, default="text_lines"), path=str(path))
    frame, _ = ingest_corpus_only(IngestParams(sources=[src]), out_dir)
    if frame.empty:
        raise DataError(f"{path}: no usable text; see {out_dir / 'quarantine.parquet'}")
    return out_dir / "corpus.parquet"


def language_model_objective(model_dir: Path) -> str | None:
    """"mlm" / "clm" for a masked / causal language model folder, None for anything else (e.g. a classifier)."""
    cfg = Path(model_dir) / "config.json"
    if not cfg.is_file():
        return None
    arch = " ".join(json.loads(cfg.read_text()).get("architectures") or [])
    if "MaskedLM" in arch:
        return "mlm"
    if "CausalLM" in arch or "LMHeadModel" in arch:
        return "clm"
    return None


def evaluate_language_model(model_dir: Path, data_path: Path, block_size: int, batch_size: int, out_dir: Path, seed: int = 0,
                            mlm_probability: float = 0.15, title: str = "Language model evaluation") -> dict[str, Any]:
    """Held-out perplexity of a pretrained LM on the texts of ``data_path`` (packed blocks, like pretraining).

    Causal LMs: perplexity of every next token. Masked LMs: pseudo-perplexity over a seeded 15% masking
    (the same masks every time, so two models are compared on the same positions).
    """
    import evaluate
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from lmops.errors import DataError
    from lmops.metrics import metric_path
    from tasks.pretrain import _batch
    from tasks.tokenize import load_tokenizer, pack_blocks

    objective = language_model_objective(model_dir)
    if objective is None:
        raise DataError(f"{model_dir} is not a masked or causal language model (config.json architectures)")
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(str(model_dir))
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    model = auto.from_pretrained(str(model_dir), use_safetensors=True).eval()
    texts = pd.read_parquet(data_path)["text"].tolist()
    try:
        blocks, _ = pack_blocks(tokenizer, texts, block_size, objective == "mlm" and tokenizer.cls_token_id is not None)
    except ValueError as exc:
        raise DataError(f"{data_path}: {exc}; lower --block-size or add text") from exc
    gen = torch.Generator().manual_seed(seed + 1)
    sums, counts = [], []
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            batch = _batch(blocks[i : i + batch_size], tokenizer, objective, mlm_probability, gen)
            # HF shifts causal labels inside the model: each row predicts block_size - 1 tokens
            n = int((batch["labels"][:, 1:] != -100).sum()) if objective == "clm" else int((batch["labels"] != -100).sum())
            if n:
                sums.append(float(model(**batch).loss) * n)
                counts.append(n)
    result = evaluate.load(metric_path("perplexity")).compute(predictions=sums, references=counts)
    report = {"objective": objective, "perplexity": round(result["perplexity"], 4), "eval_loss": round(result["mean_loss"], 6),
              "predicted_tokens": result["tokens"], "blocks": int(len(blocks)), "block_size": block_size, "texts": len(texts),
              "pseudo": objective == "mlm", "data": str(data_path)}
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    kind = "pseudo-perplexity (seeded 15% masking)" if objective == "mlm" else "perplexity"
    (out_dir / "report.md").write_text(
        f"# {title}\n\n{objective.upper()} {kind} **{report['perplexity']:.3f}** (mean loss {report['eval_loss']:.4f} nats) over "
        f"{report['predicted_tokens']:,} predicted tokens in {report['blocks']} blocks of {block_size} from {len(texts)} texts.\n")
    return report
