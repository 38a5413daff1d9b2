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

from lmops.kinds import TaskKind
from lmops.kinds.language_model import LANGUAGE_MODEL


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
        slices = (self.report.get("slices") or {}).items()
        return {"ece": self.ece, **{f"slice.{k}.macro_f1": v["macro_f1"] for k, v in slices},
                **{f"slice.{k}.ece": v["ece"] for k, v in slices if "ece" in v}}


def report_markdown(report: dict[str, Any], labels: list[str], title: str, kind: TaskKind) -> str:
    n = report.get("n", sum(c["support"] for c in report["per_class"].values()))
    lines = [f"# {title}", "", kind.report_headline(report, n), ""]
    if report.get("seen_in_training"):
        lines += [f"**{report['seen_in_training']} of these {n} rows were training or validation texts of this model**: its scores on "
                  "them are in-sample, not held out.", ""]
    if report.get("ci95"):
        lines[-1:] = ["", f"95% bootstrap interval (resampled {kind.resampled}): "
                      + " · ".join(f"{k.replace('_', '-')} [{lo:.4f}, {hi:.4f}]" for k, (lo, hi) in report["ci95"].items()), ""]
    lines += [f"| {kind.class_noun} | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
    for name in report["per_class"]:
        c = report["per_class"][name]
        lines.append(f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |")
    for avg in ("micro", "macro", "weighted"):
        a = report["averages"][avg]
        lines.append(f"| *{avg} avg* | {a['precision']:.4f} | {a['recall']:.4f} | {a['f1']:.4f} | |")
    ece_ci = (report.get("calibration") or {}).get("ci95")
    lines += ["", f"Expected calibration error (10 bins): **{report.get('ece', float('nan')):.4f}**"
              + (f", 95% bootstrap interval [{ece_ci[0]:.4f}, {ece_ci[1]:.4f}]" if ece_ci else "")]
    for name, sl in (report.get("slices") or {}).items():
        lines.append(f"- slice `{name}`: n = {sl['n']}, accuracy {sl['accuracy']:.4f}, macro-F1 {sl['macro_f1']:.4f}"
                     + (f", ECE {sl['ece']:.4f}" if "ece" in sl else ""))
    lines += ["", f"{kind.confusion_title} (rows = true, columns = predicted): " + ", ".join(labels), ""]
    for name, row in zip(labels, report["confusion_matrix"]):
        lines.append(f"- {name}: {row}")
    return "\n".join(lines) + "\n"


def evaluate_model(model_dir: Path, data_path: Path, labels: list[str], max_length: int, batch_size: int, out_dir: Path,
                   kind: TaskKind, title: str = "Evaluation") -> EvalResult:
    from lmops.tasks.predict import load_classifier, predict_logits

    out_dir.mkdir(parents=True, exist_ok=True)
    data = _labeled(data_path, labels, kind)
    model, tokenizer = load_classifier(str(model_dir), labels, kind)
    logits = predict_logits(model, tokenizer, kind.inputs(data), kind, labels, max_length, batch_size)
    return _scored(logits, data, labels, out_dir, kind, title, seen_by=[model_dir])


def evaluate_ensemble(members: list[tuple[Path, int]], data_path: Path, labels: list[str], batch_size: int, out_dir: Path,
                      kind: TaskKind, title: str = "Ensemble evaluation") -> EvalResult:
    """Several classifiers as one: the mean of their calibrated probabilities (what `lmops distill` teaches from
    several teachers), each member read at its own length (``members``: (folder, max_length) pairs), scored and
    written like one model."""
    import numpy as np
    import torch

    from lmops.tasks.predict import ensemble_probs

    out_dir.mkdir(parents=True, exist_ok=True)
    data = _labeled(data_path, labels, kind)
    mean = ensemble_probs(members, kind.inputs(data), labels, kind, batch_size)
    # log-probabilities are logits whose softmax is the mean: the report's confidences and ECE are the ensemble's
    return _scored(torch.log(mean.clamp_min(np.finfo(np.float32).tiny)), data, labels, out_dir, kind, title, seen_by=[m for m, _ in members])


def _labeled(data_path: Path, labels: list[str], kind: TaskKind):
    import pandas as pd

    data = pd.read_parquet(data_path)
    unknown = sorted(set(kind.label_values(data["label"])) - set(labels))
    if unknown:
        from lmops.errors import DataError

        raise DataError(f"{data_path}: labels {unknown} are not in the model's label set {labels}")
    return data


def _scored(logits, data, labels: list[str], out_dir: Path, kind: TaskKind, title: str, seen_by: list) -> EvalResult:
    import numpy as np
    import pandas as pd

    from lmops.tasks import seen
    from lmops.tasks.plots import confusion_matrix

    refs = kind.targets(data, labels)
    report, pred_text, confidence, score = kind.report(logits, refs, labels)
    report["task"], report["n"] = kind.name, len(refs)
    # said, not hidden: `lmops evaluate` on a file is the user's choice of rows (compare and the gate leave them out)
    masks = [m for m in (seen.seen_rows(d, data["text"]) for d in seen_by) if m is not None]
    report["seen_in_training"] = int(np.logical_or.reduce(masks).sum()) if masks else None
    report["ece"] = report["calibration"]["ece"]
    report["ci95"] = kind.interval(data["label"].tolist(), pred_text, labels, seed=0)
    # Per-slice metrics: the row subsets the kind names (each source, where there are several; the entity kind's
    # pairs of headlines whose entities disagree)
    report["slices"] = {}
    for name, idx in kind.slices(data).items():
        sub = score(list(idx))
        report["slices"][name] = {"n": len(idx), "accuracy": sub["accuracy"], "macro_f1": sub["macro_f1"], "micro_f1": sub["micro_f1"],
                                  **({"ece": sub["ece"]} if "ece" in sub else {})}

    pd.DataFrame({"id": data["id"], "label": data["label"], "prediction": pred_text,
                  "confidence": confidence}).to_parquet(out_dir / "predictions.parquet", index=False)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(report_markdown(report, labels, title, kind))
    plot = confusion_matrix(report["confusion_matrix"], labels, out_dir / "confusion.png", title)
    return EvalResult(
        accuracy=round(report["accuracy"], 6), macro_f1=round(report["macro_f1"], 6), weighted_f1=round(report["weighted_f1"], 6),
        micro_f1=round(report["micro_f1"], 6), ece=round(report["ece"], 6), n=len(refs), metrics_path=str(out_dir / "metrics.json"),
        report_path=str(out_dir / "report.md"), confusion_plot=str(plot), predictions_path=str(out_dir / "predictions.parquet"),
        report=report, task=kind.name,
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


def load_labeled_file(path: Path, params, out_dir: Path, columns: dict | None = None, exclude: list[Path] = ()):
    """Bring a user's labeled file through the same ingest rules (normalization, quarantine, label map).
    ``columns``: text_column / label_column / label_map / format of the file (default: text, label, from its suffix).
    ``exclude``: splits whose texts must not be scored here (an out-of-source set's rows that are also training
    data): left out and counted. Returns (the rows kept, as Parquet; the file's row counts: rows_in = kept +
    quarantined + duplicates; how many rows were left out)."""
    import pandas as pd

    from lmops.config import IngestParams, SourceParams
    from lmops.errors import DataError
    from lmops.tasks.dedup import text_key
    from lmops.tasks.ingest import ingest_labeled_only

    kind = params.finetune.kind
    spec = {k: v for k, v in (columns or {}).items() if v is not None}
    fmt = spec.pop("format", None) or kind.eval_file_format(_format_of(path, default="csv"))
    src = SourceParams(name=path.stem, role="labeled", format=fmt, path=str(path), **spec)
    frame, summary = ingest_labeled_only(IngestParams(sources=[src], min_chars=params.ingest.min_chars, max_chars=params.ingest.max_chars),
                                         params.validate_.labels, out_dir, kind)
    left_out = 0
    if exclude and not frame.empty:
        seen = {text_key(t) for split in exclude for t in pd.read_parquet(split, columns=["text"])["text"]}
        keep = ~frame["text"].map(text_key).isin(seen)
        left_out = int((~keep).sum())
        frame = frame[keep]
    if frame.empty:
        raise DataError(f"{path}: no usable labeled rows" + (f" ({left_out} left out: they are training data)" if left_out else "")
                        + f"; see {out_dir / 'quarantine.parquet'}")
    out = out_dir / "eval.parquet"
    frame.to_parquet(out, index=False)
    counts = next(iter(summary.sources.values()))
    return out, counts, left_out


def load_text_file(path: Path, out_dir: Path):
    """Any text file or folder through the corpus ingest rules (normalization, quarantine), for LM evaluation.
    Returns (the corpus Parquet, the row counts)."""
    from lmops.config import IngestParams, SourceParams
    from lmops.errors import DataError
    from lmops.tasks.ingest import ingest_corpus_only

    src = SourceParams(name=path.stem, role="unlabeled", format=_format_of(path, default="text_lines"), path=str(path))
    _, summary = ingest_corpus_only(IngestParams(sources=[src]), out_dir, read_back=False)
    if not summary.corpus_rows:
        raise DataError(f"{path}: no usable text; see {out_dir / 'quarantine.parquet'}")
    return out_dir / "corpus.parquet", next(iter(summary.sources.values()))


def language_model_objective(model_dir: Path) -> str | None:
    """"mlm" / "clm" for a masked / causal language model folder, None for anything else (e.g. a classifier)."""
    return LANGUAGE_MODEL.objective(model_dir)


def evaluate_language_model(model_dir: Path, data_path: Path, block_size: int, batch_size: int, out_dir: Path, seed: int = 0,
                            mlm_probability: float = 0.15, title: str = "Language model evaluation") -> dict[str, Any]:
    """Held-out perplexity of a pretrained LM on the texts of ``data_path`` (packed blocks, like pretraining).

    Causal LMs: perplexity of every next token. Masked LMs: pseudo-perplexity over a seeded 15% masking
    (the same masks every time, so two models are compared on the same positions).
    """
    import evaluate
    import pandas as pd

    from lmops.errors import DataError
    from lmops.metrics import metric_path
    from lmops.models import load_tokenizer
    from lmops.tasks.lm import lm_loss_parts
    from lmops.tasks.tokenize import pack_blocks

    objective = LANGUAGE_MODEL.objective(model_dir)
    if objective is None:
        raise DataError(f"{model_dir} is not a masked or causal language model (config.json architectures)")
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(str(model_dir))
    model = LANGUAGE_MODEL.auto_model(objective).from_pretrained(str(model_dir), use_safetensors=True).eval()
    texts = pd.read_parquet(data_path)["text"].tolist()
    try:
        blocks, _ = pack_blocks(tokenizer, texts, block_size, objective == "mlm" and tokenizer.cls_token_id is not None)
    except ValueError as exc:
        raise DataError(f"{data_path}: {exc}; lower --block-size or add text") from exc
    sums, counts = lm_loss_parts(model, blocks, tokenizer, objective, mlm_probability, batch_size, seed)
    result = evaluate.load(metric_path("perplexity")).compute(predictions=sums, references=counts)
    report = {"objective": objective, "perplexity": round(result["perplexity"], 4), "eval_loss": round(result["mean_loss"], 6),
              "predicted_tokens": result["tokens"], "blocks": int(len(blocks)), "block_size": block_size, "texts": len(texts),
              "pseudo": objective == "mlm", "data": str(data_path)}
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(
        f"# {title}\n\n{objective.upper()} {LANGUAGE_MODEL.describe(objective)} **{report['perplexity']:.3f}** (mean loss {report['eval_loss']:.4f} nats) over "
        f"{report['predicted_tokens']:,} predicted tokens in {report['blocks']} blocks of {block_size} from {len(texts)} texts.\n")
    return report
