"""The exported model at scoring time: ONNX Runtime over the version's ``lmops export`` copy, and where a version's
files live under ``LMOPS_HOME/monitor/models`` (both shared by ``scoring`` and ``export``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

RUNTIME = "onnx"
ARTIFACT = f"export/{RUNTIME}"
# ONNX Runtime runs at most this many texts per call, whatever the batch size asked for: on a 2-core AVX2 CPU a
# MiniLM call on 4 length-sorted tweets keeps its activations in cache and scored 82 texts/s, on 32 of them 66/s
# (BENCHMARKS.md, "Monitor scoring speed")
MICRO_BATCH = 4


def model_dir(name: str, version: str) -> Path:
    from lmops.env import lmops_home

    return lmops_home() / "monitor" / "models" / name / f"v{version}" / "model"


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
        from lmops.tasks import calibration

        self.calibrator = calibration.load(folder)  # as load_classifier applies it to the torch model

    def logits(self, texts: list[str], batch_size: int, max_length: int):
        import numpy as np

        out = []
        step = min(batch_size, MICRO_BATCH)
        for i in range(0, len(texts), step):
            enc = self.tokenizer(texts[i : i + step], truncation=True, max_length=max_length, padding=True, return_tensors="np")
            feed = {n: enc[n].astype(np.int64) if n in enc else np.zeros_like(enc["input_ids"], dtype=np.int64) for n in self.names}
            out.append(self.session.run(["logits"], feed)[0])
        z = np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
        return self.calibrator.apply(z) if len(z) else z

    def probabilities(self, texts: list[str], batch_size: int, max_length: int):
        import numpy as np

        z = self.logits(texts, batch_size, max_length)
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)


def load_exported(name: str, version: str, run_id: str) -> OnnxScorer:
    """The recorded export of a version (downloaded once next to the model)."""
    import mlflow

    from lmops.errors import UserError
    from lmops.tasks import registry

    mv = registry.get_version(name, version)
    if (mv.tags or {}).get(f"lmops.export.{RUNTIME}") != "passed":
        raise UserError(f"monitor.runtime is {RUNTIME}, but {name} v{version} has no checked export: run `lmops export {name}@{version}` "
                        "(or set monitor.runtime: torch)")
    folder = model_dir(name, version).parent / RUNTIME
    if not (folder / "model.onnx").is_file():
        tmp = folder.parent / f".{RUNTIME}.{os.getpid()}"
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT, dst_path=str(tmp)))
        try:
            local.rename(folder)
        except OSError:  # another process got there first
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    return OnnxScorer(folder)
