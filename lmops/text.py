"""Text normalization shared by ingest and the task kinds' row shaping."""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def normalize_text(text: str) -> str:
    """NFC, no BOM/control characters, single spaces; paragraph breaks kept as blank lines."""
    text = unicodedata.normalize("NFC", text).replace("\ufeff", "")
    text = _CONTROL.sub(" ", text)
    paragraphs = [re.sub(r"[ \t\r\f\v]+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
