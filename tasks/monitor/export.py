"""Fast scoring: ``lmops export NAME@ALIAS`` turns a registered sentiment classifier into an int8-quantised ONNX
Runtime model, checks it against the original on the version's test split (macro-F1 within
``monitor.export_max_delta`` points) and records it with the version: the files as an artifact of the version's
MLflow run (``export/onnx-int8/``), the figures as version tags. ``monitor.runtime: onnx-int8`` then scores with it.

Why ONNX Runtime with dynamic int8: on CPU it removes PyTorch's per-call overhead (which dominates at batch size
1) and runs the matrix products in int8 (most of the time at larger batches), with no training and no new model
to maintain; distillation would be the next step for a smaller model.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

RUNTIME = "onnx-int8"
ARTIFACT = f"export/{RUNTIME}"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS") or 0)  # 0: ONNX Runtime's default, every core


class OnnxScorer:
    """``probabilities`` like :class:`scoring.Scorer`, from an ONNX model and the model's own tokenizer."""

    def __init__(self, folder: Path):
        import onnxruntime as ort

        from lmops.models import load_tokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads()
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = load_tokenizer(str(folder))

    def logits(self, texts: list[str], batch_size: int, max_length: int):
        import numpy as np

        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[i : i + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="np")
            feed = {n: enc[n].astype(np.int64) if n in enc else np.zeros_like(enc["input_ids"], dtype=np.int64) for n in self.names}
            out.append(self.session.run(["logits"], feed)[0])
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def probabilities(self, texts: list[str], batch_size: int, max_length: int):
        import numpy as np

        z = self.logits(texts, batch_size, max_length)
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)


def to_onnx(model_dir: Path, out: Path, max_length: int) -> Path:
    """``out/model.onnx`` (fp32) with the tokenizer beside it; batch and sequence length dynamic."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from lmops.models import load_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), use_safetensors=True).eval()
    tok = load_tokenizer(str(model_dir))
    enc = tok(["a short finance headline", "a second one, a little longer than the first"], padding=True, truncation=True,
              max_length=max_length, return_tensors="pt")
    names = [n for n in INPUTS if n in enc]

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return self.m(**dict(zip(names, args))).logits

    with torch.no_grad():
        torch.onnx.export(Logits(model), tuple(enc[n] for n in names), str(out / "model.fp32.onnx"), input_names=names, output_names=["logits"],
                          dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in names}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    tok.save_pretrained(str(out))
    return out / "model.fp32.onnx"


def quantize(fp32: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    return out


def export(ref: str, root: Path, p, data: Path | None, work: Path) -> dict[str, Any]:
    """Export, check and record ``ref`` (``NAME@ALIAS`` or ``NAME@VERSION``); raises DataError when the check fails."""
    import numpy as np
    import pandas as pd

    from lmops.errors import DataError, UserError
    from lmops.kinds import KINDS
    from lmops.metrics import macro_f1
    from lmops.tasks import registry
    from lmops.tasks.monitor import scoring
    from lmops.tasks.version import cached_file

    name, alias = registry.parse_ref(ref)
    scorer = scoring.load(name, alias or "champion")
    mv = registry.get_version(name, scorer.version)
    counts = None
    if data is not None:
        from lmops.tasks.evaluate import load_labeled_file

        test_path, counts = load_labeled_file(data, p, work / "data")
    else:
        md5 = (mv.tags or {}).get("data_version", "")
        test_path = cached_file(root, md5, "test.parquet") if md5 else None
        if test_path is None:
            raise UserError(f"{name} v{scorer.version}: its test split (data version {md5 or 'unknown'}) is not in this project's DVC cache; "
                            "`dvc pull` it, or pass --data FILE (a labeled CSV/JSONL/Parquet) to check the export on")
    test = pd.read_parquet(test_path)
    labels = scorer.labels
    unknown = sorted(set(test["label"]) - set(labels))
    if unknown:
        raise DataError(f"{test_path}: labels {unknown} are not the model's {labels}")
    refs = [labels.index(x) for x in test["label"]]
    texts = test["text"].tolist()
    m = p.monitor
    from lmops.tasks.predict import predict_logits

    t0 = time.time()
    torch_pred = predict_logits(scorer.model, scorer.tokenizer, texts, KINDS["sequence"], labels, m.max_length, m.batch_size).argmax(-1).tolist()
    torch_s = time.time() - t0
    folder = work / RUNTIME
    fp32 = to_onnx(scoring.model_dir(name, scorer.version), folder, m.max_length)
    quantize(fp32, folder / "model.onnx")
    fp32.unlink()
    onnx = OnnxScorer(folder)
    t0 = time.time()
    onnx_pred = onnx.logits(texts, m.batch_size, m.max_length).argmax(-1).tolist()
    onnx_s = time.time() - t0
    f_torch, f_onnx = macro_f1(refs, torch_pred, len(labels)), macro_f1(refs, onnx_pred, len(labels))
    delta = round((f_onnx - f_torch) * 100, 3)
    result = {"model": name, "version": scorer.version, "runtime": RUNTIME, "test_rows": len(refs), "test": str(data or test_path),
              "macro_f1_original": round(f_torch, 5), "macro_f1_exported": round(f_onnx, 5), "delta_points": delta,
              "max_delta_points": m.export_max_delta, "agreement": round(float(np.mean(np.array(torch_pred) == np.array(onnx_pred))), 5),
              "seconds_original": round(torch_s, 2), "seconds_exported": round(onnx_s, 2),
              "size_mb": round((folder / "model.onnx").stat().st_size / 1e6, 1), "passed": abs(delta) <= m.export_max_delta,
              "data_rows": counts.__dict__ if counts else None}
    (folder / "export.json").write_text(json.dumps(result, indent=2))
    if not result["passed"]:
        raise DataError(f"{name} v{scorer.version} as {RUNTIME}: test macro-F1 {f_onnx:.4f} against {f_torch:.4f} ({delta:+.2f} points), "
                        f"outside monitor.export_max_delta={m.export_max_delta}; not recorded (details: {folder / 'export.json'})")
    c = registry.client()
    c.log_artifacts(mv.run_id, str(folder), artifact_path=ARTIFACT)
    for k in ("macro_f1_exported", "delta_points", "test_rows", "size_mb"):
        c.set_model_version_tag(name, scorer.version, f"lmops.export.{RUNTIME}.{k}", str(result[k]))
    c.set_model_version_tag(name, scorer.version, f"lmops.export.{RUNTIME}", "passed")
    result["artifact"] = f"runs:/{mv.run_id}/{ARTIFACT}"
    return result


def load_exported(name: str, version: str, run_id: str) -> OnnxScorer:
    """The recorded export of a version (downloaded once next to the model)."""
    import mlflow

    from lmops.errors import UserError
    from lmops.tasks import registry

    mv = registry.get_version(name, version)
    if (mv.tags or {}).get(f"lmops.export.{RUNTIME}") != "passed":
        raise UserError(f"monitor.runtime is {RUNTIME}, but {name} v{version} has no checked export: run `lmops export {name}@{version}` "
                        "(or set monitor.runtime: torch)")
    folder = Path(scoring_dir(name, version)) / RUNTIME
    if not (folder / "model.onnx").is_file():
        tmp = folder.parent / f".{RUNTIME}.{os.getpid()}"
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT, dst_path=str(tmp)))
        try:
            local.rename(folder)
        except OSError:
            pass
    return OnnxScorer(folder)


def scoring_dir(name: str, version: str) -> Path:
    from lmops.tasks.monitor import scoring

    return scoring.model_dir(name, version).parent
