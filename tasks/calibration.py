"""Confidence calibration fitted on the validation split: a calibrator object per method.

A fine-tuned classifier is usually over-confident. After fine-tuning a calibrator is fitted on the validation
split's logits, saved as ``calibration.json`` inside the model folder — it travels with the registered version —
and applied wherever the model is read (:func:`lmops.tasks.predict.load_classifier`, the monitor's ONNX scorer),
so evaluation reports, the gate and the monitor's confidences all use it. No method changes an arg-max, so
accuracy and F1 are the same with or without one.

- ``temperature`` (Guo et al., 2017): one scalar T divides the logits. T comes from a log-spaced grid that
  contains 1, so it can only lower the validation NLL. One number; it can make confidences uniformly softer
  but not fix a shape error (over-confident at the top, under-confident in the middle, which is what
  fine-tuned MiniLM shows: ECE 0.035 on its own validation split at the best T).
- ``isotonic``: temperature first, then isotonic regression (Zadrozny & Elkan, 2002) of "the prediction was
  right" on the top-label confidence: a monotone map (so a higher raw confidence never reads lower), at most
  1 − 1/(n + 2) from n validation rows. The other classes keep their proportions and share the rest; the
  top confidence is never lowered below the point where the runner-up would overtake, so the arg-max stays.
  On the best sentiment model it lowers test ECE from 0.041 to 0.014 (SEntFiN) and 0.035 to 0.016 (tweets),
  and the NLL too (BENCHMARKS.md "Calibration beyond a temperature"). Beta calibration (3 numbers) was
  tried: kept monotone it did worse; unconstrained it fits a map that falls again below confidence 0.58.

Calibrators work on numpy arrays so the torch path and the ONNX scorer apply the same code. Their output is
logits (log-probabilities for ``isotonic``): softmax gives the calibrated probabilities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

FILE = "calibration.json"


@dataclass(frozen=True)
class Identity:
    """Raw logits: a model without a calibration file, or training-time reads."""

    method: ClassVar[str] = "none"

    def apply(self, z):
        return z

    def to_json(self) -> dict:
        return {"method": self.method}


@dataclass(frozen=True)
class Temperature:
    temperature: float = 1.0
    method: ClassVar[str] = "temperature"

    @classmethod
    def fit(cls, logits, targets: list[int]) -> Temperature:
        return cls(fit_temperature(logits, targets))

    def apply(self, z):
        return z / self.temperature if self.temperature != 1.0 else z

    def to_json(self) -> dict:
        return {"method": self.method, "temperature": self.temperature}


# confidences are kept inside (0, 1) so every calibrated log-probability is finite
_EPS = 1e-7


@dataclass(frozen=True)
class Isotonic(Temperature):
    """Temperature, then a monotone step map of the top-label confidence fitted by isotonic regression."""

    x: tuple[float, ...] = ()  # confidence knots (after the temperature), increasing
    y: tuple[float, ...] = ()  # calibrated confidence at each knot; linear in between, flat outside
    method: ClassVar[str] = "isotonic"

    @classmethod
    def fit(cls, logits, targets: list[int]) -> Isotonic:
        import numpy as np
        from sklearn.isotonic import IsotonicRegression

        t = fit_temperature(logits, targets)
        p = _softmax(np.asarray(logits, dtype=np.float64) / t)
        if len(p) == 0:
            return cls(t)
        conf, right = p.max(-1), (p.argmax(-1) == np.asarray(targets)).astype(np.float64)
        # never certain from n validation rows (Laplace's rule of succession): a wrong answer at confidence 1
        # would cost an infinite log-loss
        iso = IsotonicRegression(y_min=0.0, y_max=1 - 1 / (len(conf) + 2), out_of_bounds="clip").fit(conf, right)
        return cls(t, tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_)))

    def apply(self, z):
        import numpy as np

        zt = super().apply(z)
        if not self.x or np.size(zt) == 0:
            return zt
        p = _softmax(np.asarray(zt, dtype=np.float64))
        rows = np.arange(len(p))
        top = p.argmax(-1)
        new = np.interp(p[rows, top], self.x, self.y)  # as sklearn's predict: linear between knots, clipped outside
        rest = p.copy()
        rest[rows, top] = 0.0
        total = rest.sum(-1, keepdims=True)
        # the other classes keep their proportions (evenly split when the softmax left them nothing: an extreme logit)
        share = np.where(total > 0, rest / np.maximum(total, 1e-300), (rest == 0) / max(p.shape[-1] - 1, 1))
        share[rows, top] = 0.0
        runner_up = share.max(-1)
        # c' / (1 - c') must stay above the runner-up's share: the arg-max is the model's, as with a temperature
        new = np.clip(np.maximum(new, runner_up / (1 + runner_up) + 1e-6), _EPS, 1 - _EPS)
        out = share * (1 - new)[:, None]
        out[rows, top] = new
        return np.log(np.maximum(out, 1e-300)).astype(np.asarray(z).dtype)

    def to_json(self) -> dict:
        return {**super().to_json(), "isotonic": {"x": list(self.x), "y": list(self.y)}}


METHODS: dict[str, type] = {c.method: c for c in (Temperature, Isotonic)}


def _softmax(z):
    import numpy as np

    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


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


def fit(method: str, raw_logits, targets: list[int]) -> tuple[Temperature, dict[str, float], dict[str, float]]:
    """(calibrator, validation scores before, after): what :func:`write` saves with a model."""
    import numpy as np

    cal = METHODS[method].fit(raw_logits, targets)
    z = np.asarray(raw_logits, dtype=np.float64)
    return cal, scores(z, targets), scores(cal.apply(z), targets)


def write(model_dir: Path, calibrator: Temperature, before: dict, after: dict) -> Path:
    path = Path(model_dir) / FILE
    path.write_text(json.dumps({**calibrator.to_json(), "fitted_on": "validation split",
                                "validation_before": before, "validation_after": after}, indent=2))
    return path


def load(model_dir: str | Path):
    """The model's calibrator: :class:`Identity` when it has no calibration file (raw softmax)."""
    path = Path(model_dir) / FILE
    if not path.is_file():
        return Identity()
    saved = json.loads(path.read_text())
    method = saved.get("method", "temperature")
    if method not in METHODS:
        from lmops.errors import ConfigError

        raise ConfigError(f"{path}: calibration method {method!r} is not one of {sorted(METHODS)}; this lmops cannot apply it")
    knots = saved.get("isotonic", {})
    return METHODS[method](float(saved["temperature"]), *(tuple(knots[k]) for k in ("x", "y") if k in knots))


def temperature(model_dir: str | Path) -> float:
    """The model's fitted temperature; 1.0 (uncalibrated) when it has none."""
    return getattr(load(model_dir), "temperature", 1.0)


def scores(logits, targets: list[int]) -> dict[str, float]:
    """Validation NLL and expected calibration error (10 equal-width bins, as in the evaluation report), before or after calibration."""
    import torch

    from lmops.metrics import calibration

    z = torch.as_tensor(logits, dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.long)
    nll = float(torch.nn.functional.cross_entropy(z, y)) if len(y) else 0.0
    return {"nll": round(nll, 4), "ece": round(float(calibration(z.softmax(-1), targets)["ece"]), 4)}
