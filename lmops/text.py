"""Text normalization shared by ingest and the task kinds' row shaping."""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Invisible format characters: zero-width space/non-joiner/joiner, word joiner, soft hyphen, BOM, Mongolian
# vowel separator. Left in, "Tata\u200bMotors" is a different text from "Tata Motors" to every hash, so copies
# of test rows would pass deduplication and the leakage guard.
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\u00ad\ufeff\u180e]")


def normalize_text(text: str) -> str:
    """NFC, no control or invisible format characters, single spaces; paragraph breaks kept as blank lines."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFC", text))
    text = _CONTROL.sub(" ", text)
    paragraphs = [re.sub(r"[ \t\r\f\v]+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
