"""Fast scoring: ``lmops export NAME@ALIAS`` turns a registered sentiment classifier into an ONNX Runtime model,
checks it against the original on the version's test split and records it with the version: the files as an
artifact of the version's MLflow run (``export/onnx/``), the figures as version tags. ``monitor.runtime: onnx``
then scores with it.

Candidates, each scored on the whole test split: the graph with ONNX Runtime's transformer fusions (attention,
GELU, layer norm) in fp32; the same with int8 weights everywhere (dynamic quantisation, per channel); and two
mixed copies that keep in fp32 the projections most hurt by per-tensor int8 activations: the FFN's down-projection
(its input, after GELU, has the outliers) and then also the attention output projection. Those within
``monitor.export_max_delta`` macro-F1 points of the original qualify; the most accurate of those no more than 10%
slower than the fastest qualifying one is kept (a few % is timing noise, not worth points).
Why the ladder: on CPUs without int8 dot-product instructions (AVX2 only) int8 is no faster and costs 0.5-1.5
points on MiniLM; on AVX512-VNNI / AMX machines all-int8 MiniLM-L6 ran 1.7x fp32 at batch 1 but cost 0.84 points,
the copy with both projections in fp32 1.3x at 0.02 points (BENCHMARKS.md); the measurement picks per machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lmops.tasks.monitor.runtime import ARTIFACT, RUNTIME

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MIN_GAIN = 0.10


def to_onnx(model_dir: Path, out: Path, max_length: int) -> Path:
    """``out/model.onnx`` (fp32) with the tokenizer beside it; batch and sequence length dynamic."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from lmops.models import load_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    from lmops.tasks.pooling import apply_pooling

    # eager attention exports as plain MatMul/Softmax, which ONNX Runtime's transformer optimizer fuses into one Attention op
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), use_safetensors=True, attn_implementation="eager").eval()
    apply_pooling(model)  # a mean-pooled classifier (finetune.pooling) exports the forward it was trained with
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
    from lmops.tasks.calibration import FILE

    if (Path(model_dir) / FILE).is_file():  # the graph gives raw logits; the scorer applies the model's calibrator
        (out / FILE).write_text((Path(model_dir) / FILE).read_text())
    return out / "model.fp32.onnx"


# ops whose output feeds a projection kept in fp32 by the mixed copies: an activation (the FFN down-projection), then
# the attention op (its output projection). These are the fused graph's ops (and ReLU's, which needs no fusing); in
# an unfused graph GELU ends in a Mul and attention in a Reshape, so no mixed copy is made there
ACTIVATIONS = ("BiasGelu", "Gelu", "FastGelu", "QuickGelu", "Relu")
ATTENTION = ("Attention", "MultiHeadAttention")
LADDER = (("int8", ()), ("int8-ffn-fp32", ACTIVATIONS), ("int8-proj-fp32", ACTIVATIONS + ATTENTION))


def projections_fed_by(graph, producers: tuple[str, ...]) -> list[str]:
    """Names of the MatMul nodes whose data input is an output of an op of one of these types."""
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and made_by.get(n.input[0]) in producers]


def candidates(fp32: Path, model_dir: Path, out: Path) -> dict[str, Path]:
    """``{"fp32": fused graph, "int8": its int8-weight copy, mixed copies...}`` (a model type the optimizer does not
    know: unfused; a mixed copy that would keep nothing in fp32, or the same nodes as the one before, is left out)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    kind = {"bert": "bert", "gpt2": "gpt2", "roberta": "bert", "distilbert": "bert"}.get(cfg.get("model_type", ""))
    fused = out / "fp32.onnx"
    if kind:
        opt = optimize_model(str(fp32), model_type=kind, num_heads=cfg.get("num_attention_heads", cfg.get("n_head", 0)),
                             hidden_size=cfg.get("hidden_size", cfg.get("n_embd", 0)))
        opt.save_model_to_file(str(fused))
    else:
        onnx.save(onnx.load(str(fp32)), str(fused))
    graph = onnx.load(str(fused)).graph
    found = {"fp32": fused}
    seen: list[set[str]] = []
    for name, producers in LADDER:
        keep = projections_fed_by(graph, producers)
        if (producers and not keep) or set(keep) in seen:
            continue
        seen.append(set(keep))
        found[name] = out / f"{name}.onnx"
        # fused ops come from ONNX Runtime's own domain, whose output types shape inference cannot see: say they are float
        quantize_dynamic(str(fused), str(found[name]), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep,
                         extra_options={"DefaultTensorType": 1})
    return found


def choose(tried: dict[str, dict]) -> str | None:
    """The most accurate qualifying candidate among those at most MIN_GAIN slower than the fastest qualifying one."""
    ok = {k: v for k, v in tried.items() if v["passed"]}
    if not ok:
        return None
    fastest = min(v["seconds"] for v in ok.values())
    near = [k for k, v in ok.items() if v["seconds"] * (1 - MIN_GAIN) <= fastest]
    return max(near, key=lambda k: (ok[k]["macro_f1"], -ok[k]["seconds"]))


def export(ref: str, root: Path, p, data: Path | None, work: Path) -> dict[str, Any]:
    """Export, check and record ``ref`` (``NAME@ALIAS`` or ``NAME@VERSION``); raises DataError when the check fails."""
    import numpy as np
    import pandas as pd

    from lmops.errors import DataError, UserError
    from lmops.kinds import KINDS
    from lmops.metrics import macro_f1
    from lmops.tasks import registry
    from lmops.tasks.monitor import scoring
    from lmops.tasks.monitor.runtime import OnnxScorer, model_dir
    from lmops.tasks.version import cached_file

    name, alias = registry.parse_ref(ref)
    scorer = scoring.load(name, alias or "champion")
    mv = registry.get_version(name, scorer.version)
    counts = None
    if data is not None:
        from lmops.tasks.evaluate import load_labeled_file

        test_path, counts, _ = load_labeled_file(data, p, work / "data")
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
    fp32 = to_onnx(model_dir(name, scorer.version), folder, m.max_length)
    f_torch = macro_f1(refs, torch_pred, len(labels))
    tried = {}
    for precision, path in candidates(fp32, model_dir(name, scorer.version), work / "candidates").items():
        path.replace(folder / "model.onnx")
        onnx = OnnxScorer(folder)
        t0 = time.time()
        pred = onnx.logits(texts, m.batch_size, m.max_length).argmax(-1).tolist()
        seconds = time.time() - t0
        f = macro_f1(refs, pred, len(labels))
        tried[precision] = {"macro_f1": round(f, 5), "delta_points": round((f - f_torch) * 100, 3), "seconds": round(seconds, 2),
                            "agreement": round(float(np.mean(np.array(torch_pred) == np.array(pred))), 5),
                            "passed": abs(f - f_torch) * 100 <= m.export_max_delta}
        (folder / "model.onnx").replace(work / "candidates" / f"{precision}.onnx")
    fp32.unlink()
    best = choose(tried)
    if best:
        (work / "candidates" / f"{best}.onnx").replace(folder / "model.onnx")
    chosen = tried[best] if best else {}
    result = {"model": name, "version": scorer.version, "runtime": RUNTIME, "precision": best, "test_rows": len(refs), "test": str(data or test_path),
              "macro_f1_original": round(f_torch, 5), "macro_f1_exported": chosen.get("macro_f1"), "delta_points": chosen.get("delta_points"),
              "max_delta_points": m.export_max_delta, "agreement": chosen.get("agreement"), "seconds_original": round(torch_s, 2),
              "seconds_exported": chosen.get("seconds"), "candidates": tried, "passed": best is not None,
              "size_mb": round((folder / "model.onnx").stat().st_size / 1e6, 1) if best else None, "data_rows": counts.__dict__ if counts else None}
    (folder / "export.json").write_text(json.dumps(result, indent=2))
    if best is None:
        figures = "; ".join(f"{k}: {v['macro_f1']:.4f} ({v['delta_points']:+.2f} points)" for k, v in tried.items())
        raise DataError(f"{name} v{scorer.version}: no ONNX export within monitor.export_max_delta={m.export_max_delta} points of the original's "
                        f"test macro-F1 {f_torch:.4f} ({figures}); not recorded (details: {folder / 'export.json'})")
    c = registry.client()
    c.log_artifacts(mv.run_id, str(folder), artifact_path=ARTIFACT)
    for k in ("precision", "macro_f1_exported", "delta_points", "test_rows", "size_mb"):
        c.set_model_version_tag(name, scorer.version, f"lmops.export.{RUNTIME}.{k}", str(result[k]))
    c.set_model_version_tag(name, scorer.version, f"lmops.export.{RUNTIME}", "passed")
    result["artifact"] = f"runs:/{mv.run_id}/{ARTIFACT}"
    return result
