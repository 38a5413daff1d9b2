"""Language models (masked or causal), for evaluation: held-out (pseudo-)perplexity on any text.
Pretrained models are told apart from classifiers by their saved architecture."""

from __future__ import annotations

import json
from pathlib import Path


class LanguageModelKind:
    name = "language_model"

    @staticmethod
    def objective(model_dir: Path) -> str | None:
        """"mlm" / "clm" for a masked / causal language model folder, None for anything else (a classifier)."""
        cfg = Path(model_dir) / "config.json"
        if not cfg.is_file():
            return None
        arch = " ".join(json.loads(cfg.read_text()).get("architectures") or [])
        if "MaskedLM" in arch:
            return "mlm"
        if "CausalLM" in arch or "LMHeadModel" in arch:
            return "clm"
        return None

    @staticmethod
    def auto_model(objective: str):
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        return AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM

    @staticmethod
    def describe(objective: str) -> str:
        return "pseudo-perplexity (seeded 15% masking)" if objective == "mlm" else "perplexity"


LANGUAGE_MODEL = LanguageModelKind()
