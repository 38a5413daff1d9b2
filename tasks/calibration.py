"""Confidence calibration: temperature scaling (Guo et al., 2017) fitted on the validation split.

A fine-tuned classifier is usually over-confident; one scalar T > 0 divides its logits so the softmax
confidences match how often it is right. The arg-max, and so every accuracy or F1, is unchanged. T is
fitted after fine-tuning (the NLL of the validation split, over a log-spaced grid that contains T = 1, so
calibration can only lower that NLL), saved as ``calibration.json`` inside the model folder — it travels
with the registered version — and applied wherever the model is read (:func:`lmops.tasks.predict.load_classifier`,
the monitor's ONNX copy), so evaluation reports, the gate and the monitor's confidences all use it.
"""

from __future__ import annotations

import json
from pathlib import Path

FILE = "calibration.json"


def fit_temperature(logits, targets: list[int]) -> float:
    """The T minimising the mean negative log-likelihood of ``targets`` under softmax(logits / T)."""
    import torch

    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(targets, dtype=torch.long)
    if len(y) == 0:
        return 1.0
    grid = torch.cat([torch.logspace(-1.5, 1.5, 301, dtype=torch.float64), torch.ones(1, dtype=torch.float64)])  # 0.03 … 32, and 1
    nll = torch.stack([torch.nn.functional.cross_entropy(z / t, y) for t in grid])
    return float(grid[int(nll.argmin())])


def fit(raw_logits, targets: list[int]) -> tuple[float, dict[str, float], dict[str, float]]:
    """(T, validation scores before, after): what :func:`write` saves with a model."""
    t = fit_temperature(raw_logits, targets)
    return t, scores(raw_logits, targets), scores(raw_logits / t, targets)


def write(model_dir: Path, temperature: float, before: dict, after: dict) -> Path:
    path = Path(model_dir) / FILE
    path.write_text(json.dumps({"method": "temperature", "temperature": temperature, "fitted_on": "validation split",
                                "validation_before": before, "validation_after": after}, indent=2))
    return path


def temperature(model_dir: str | Path) -> float:
    """The model's fitted temperature; 1.0 (uncalibrated) when it has none."""
    path = Path(model_dir) / FILE
    return float(json.loads(path.read_text())["temperature"]) if path.is_file() else 1.0


def scores(logits, targets: list[int]) -> dict[str, float]:
    """Validation NLL and expected calibration error (10 equal-width bins, as in the evaluation report), before or after scaling."""
    import torch

    from lmops.metrics import calibration

    z = torch.as_tensor(logits, dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.long)
    nll = float(torch.nn.functional.cross_entropy(z, y)) if len(y) else 0.0
    return {"nll": round(nll, 4), "ece": round(float(calibration(z.softmax(-1), targets)["ece"]), 4)}
