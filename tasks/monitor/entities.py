"""Which companies a text mentions: a dictionary of names, aliases and tickers (``monitor.entities``), matched as
whole words in one pass. Names and aliases are case-sensitive ("Apple" the company, not "apple" the fruit);
a ticker matches as a cashtag ($AAPL, any case) or as the bare upper-case word."""

from __future__ import annotations

import re

from lmops.config import MonitorEntity


class EntityMatcher:
    def __init__(self, entities: dict[str, MonitorEntity]):
        self.surfaces: dict[str, str] = {}  # surface form -> canonical name
        for name, e in entities.items():
            for s in (name, *e.aliases, *e.tickers):
                self.surfaces.setdefault(s, name)
            for t in e.tickers:
                self.surfaces.setdefault(f"${t.upper()}", name)
        alts = sorted(self.surfaces, key=len, reverse=True)  # the longest surface wins ("Apple Inc" before "Apple")
        self._re = re.compile(r"(?<![\w$])(" + "|".join(map(re.escape, alts)) + r")(?!\w)") if alts else None
        self._cashtag = re.compile(r"(?<![\w$])\$([A-Za-z][A-Za-z.]{0,9})(?!\w)")

    def find(self, text: str) -> list[tuple[str, str]]:
        """(canonical name, surface as written) per company mentioned, first mention each, in text order."""
        found: dict[str, str] = {}
        if self._re is not None:
            for m in self._re.finditer(text):
                found.setdefault(self.surfaces[m.group(1)], m.group(1))
        for m in self._cashtag.finditer(text):  # $aapl as well as $AAPL
            name = self.surfaces.get(f"${m.group(1).upper()}")
            if name is not None:
                found.setdefault(name, m.group(0))
        return list(found.items())


def spans(tags: list[str], words: list[str], types: list[str]) -> list[str]:
    """The words of each IOB2 span whose type is in ``types`` (an I- without its B- starts a span, as seqeval reads it)."""
    out, cur, cur_type = [], [], None
    for tag, word in zip([*tags, "O"], [*words, ""]):
        kind = tag[2:] if tag[:2] in ("B-", "I-") else None
        if cur and (tag.startswith("B-") or kind != cur_type):
            out.append(" ".join(cur))
            cur, cur_type = [], None
        if kind in types:
            cur.append(word)
            cur_type = kind
    return out


_EDGE = re.compile(r"^[^\w$]+|[^\w.]+$|(?<=\w)'s$")


def ner_mentions(tags_per_text: list[str], texts: list[str], matcher: EntityMatcher, types: list[str]) -> list[list[tuple[str, str]]]:
    """(canonical name, surface) per span a tagger found, per text: a dictionary name when the span is one of its
    surfaces, else the span itself (punctuation at its edges and a possessive 's removed)."""
    out = []
    for tags, text in zip(tags_per_text, texts):
        found: dict[str, str] = {}
        for span in spans(tags.split(" "), text.split(" "), types):
            surface = _EDGE.sub("", span).strip()
            if len(surface) >= 2:
                found.setdefault(matcher.surfaces.get(surface, surface), surface)
        out.append(list(found.items()))
    return out
