"""Text normalization shared by ingest and the task kinds' row shaping."""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from itertools import chain

try:  # the compiled kernels (lmops/_textkernels.c), built with the package; each equals a *_py definition below
    from lmops import _textkernels as _kernels
except ImportError:  # not built (no C compiler where it was installed): the Python definitions do the same work
    _kernels = None
if os.environ.get("LMOPS_PURE_PYTHON"):  # the definitions alone (tests compare the two; a suspected kernel bug)
    _kernels = None

# Invisible format characters: zero-width space/non-joiner/joiner, word joiner, soft hyphen, BOM, Mongolian
# vowel separator. Left in, "Tata\u200bMotors" is a different text from "Tata Motors" to every hash, so copies
# of test rows would pass deduplication and the leakage guard.
_INVISIBLE_CHARS = "\u200b\u200c\u200d\u2060\u00ad\ufeff\u180e"
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]")
_PARAGRAPH = re.compile(r"\n\s*\n")
# The whitespace str.split() splits on (str.isspace) other than the line feed, the space and the control characters
# (\x0b, \x0c, \x1c-\x1f, \x85): one pass turns these and the control characters alike into spaces.
OTHER_SPACES = "\t\r\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_CONTROL_OR_SPACE = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{OTHER_SPACES}]")


def without_invisible(text: str) -> str:
    # seven substring searches cost a tenth of one regex pass, and most documents hold none of them
    return _INVISIBLE.sub("", text) if any(c in text for c in _INVISIBLE_CHARS) else text


def normalize_text(text: str) -> str:
    """NFC, no control or invisible format characters, single spaces; paragraph breaks kept as blank lines."""
    if _kernels is not None:
        # most texts hold only characters NFC leaves as they are, which the kernel checks as it folds: Python's own
        # check of that (inside unicodedata.normalize) cost a fifth of the folding time again
        folded = _kernels.fold(text, nfc_safe())
        return folded if folded is not None else _kernels.fold(unicodedata.normalize("NFC", text))
    return normalize_text_py(text)


NFC_SAFE_BELOW = 0x10000  # the kernel's bitmap covers the Basic Multilingual Plane; other characters go through NFC


@functools.cache
def nfc_safe() -> bytes:
    """Bitmap of the characters below NFC_SAFE_BELOW that no NFC changes, wherever they stand: NFC maps the
    character to itself, it has combining class 0 (nothing reorders around it) and it is not the second half of any
    canonical pair (nothing composes with the character before it): Unicode's NFC_Quick_Check=Yes with class 0.
    A text of such characters only is its own NFC. Built from this Python's unicodedata (~30 ms, once per process),
    so it follows the Unicode version that unicodedata.normalize does. The whole plane, not the scripts below
    U+3000 alone: filings converted from Word carry Symbol-font bullets in the private use area (U+F0B7), and 5 of
    the 10-K sample's 142 documents went through unicodedata.normalize for one of them."""
    seconds = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))  # Hangul vowels and trailing consonants
    # the pairs whose second half lies below the bound all sit there too (tests/test_textkernels.py checks the whole
    # plane), but the Hangul syllables' algorithmic ones above
    for x in range(NFC_SAFE_BELOW):
        d = unicodedata.decomposition(chr(x))
        if d and d[0] != "<" and len(parts := d.split()) == 2:
            seconds.add(int(parts[1], 16))
    bits = bytearray(NFC_SAFE_BELOW // 8)
    for c in range(NFC_SAFE_BELOW):
        ch = chr(c)
        if c not in seconds and not unicodedata.combining(ch) and unicodedata.normalize("NFC", ch) == ch:
            bits[c >> 3] |= 1 << (c & 7)
    return bytes(bits)


def normalize_text_py(text: str) -> str:
    """normalize_text in Python: the definition the compiled kernel is tested against, and the fallback."""
    text = without_invisible(unicodedata.normalize("NFC", text))
    # Every whitespace character a space but the line feed: _PARAGRAPH's \s matches the same characters before
    # and after, so the paragraphs are the ones " ".join(p.split()) would fold, and folding is then a few
    # C-level replaces per paragraph instead of a list of its words (a third of the time on 10-K filings).
    text = _CONTROL_OR_SPACE.sub(" ", text)
    return "\n\n".join(p for p in map(_fold_spaces, _PARAGRAPH.split(text)) if p)


def _fold_spaces(paragraph: str) -> str:
    """" ".join(paragraph.split()) for a paragraph whose only whitespace is spaces and line feeds."""
    paragraph = paragraph.replace("\n", " ")
    while "  " in paragraph:
        paragraph = paragraph.replace("  ", " ")
    return paragraph.strip(" ")


class Boilerplate:
    """Page furniture that converting a paginated filing to text leaves between paragraphs: lines that match a
    pattern whole (page numbers, "Table of Contents" links) and running headers and footers ("2023 FORM 10-K",
    the company's name), which are short lines repeated beside those page breaks. Removed line by line before
    normalization, which would otherwise join them into the sentences around them.

    A repeated line counts as a header only next to a page break (within ``window`` non-blank lines of a pattern
    match): a table's "Total" or a wrapped "and" repeats as often, but not at page breaks."""

    def __init__(self, line_patterns: list[str], repeated_line_min: int, repeated_line_max_chars: int, window: int = 1):
        # one alternation, each pattern's leading global flags ("(?i)") scoped to its own branch
        self._line = re.compile("|".join(map(scoped, line_patterns))) if line_patterns else None
        self._max_key = _longest_match(self._line.pattern) if line_patterns else -1
        self._first = first_chars(self._line.pattern) if line_patterns else None
        self._repeats = repeated_line_min
        self._max_chars = repeated_line_max_chars
        self._window = window
        self._memo = _new_memo()

    def __getstate__(self):
        # shipped to a cluster's worker per batch: the patterns, not what this process has remembered
        return {k: v for k, v in self.__dict__.items() if k != "_memo"}

    def __setstate__(self, state):
        self.__dict__.update(state, _memo=_new_memo())

    def strip(self, text: str) -> tuple[str, int]:
        """(text without boilerplate lines, number of lines removed)."""
        if self._line is None:
            return text, 0
        if _kernels is not None:
            return _kernels.strip_lines(text, self._line.fullmatch, self._repeats, self._max_chars, self._window, self._memo,
                                        self._max_key, self._first)
        return self.strip_py(text)

    def strip_py(self, text: str) -> tuple[str, int]:
        """strip in Python: the definition the compiled kernel is tested against, and the fallback."""
        if self._line is None:
            return text, 0
        lines = text.split("\n")
        # \u200b and friends count as blank: EDGAR puts a zero-width space on a line of its own beside page numbers
        # (removing them leaves every line in place: none is a line break)
        keys = [ln.strip() for ln in without_invisible(text).split("\n")]
        match = self._line.fullmatch
        anchors = [i for i, k in enumerate(keys) if k and match(k) is not None]
        if not anchors:
            return text, 0
        drop = set(anchors)
        if self._repeats:
            near = self._near_breaks(keys, anchors, drop)
            counts: dict[str, int] = {}
            for i in near:
                counts[keys[i]] = counts.get(keys[i], 0) + 1
            drop.update(i for i in near if counts[keys[i]] >= self._repeats)
        # a removed line leaves its line break, so the paragraphs around a page break stay apart only where they were;
        # the lines between removed ones joined as slices (a filing has a few hundred of them among thousands of lines)
        cuts = sorted(drop)
        kept = chain(lines[: cuts[0]], *(lines[a + 1 : b] for a, b in zip(cuts, cuts[1:])), lines[cuts[-1] + 1 :])
        return "\n".join(kept), len(drop)

    def _near_breaks(self, keys: list[str], anchors: list[int], anchor_set: set[int]) -> list[int]:
        """Indexes of short lines with a letter within ``window`` non-blank lines of a page-break line, found by
        walking out from each page break (there are far fewer of those than lines)."""
        out: set[int] = set()
        n = len(keys)
        for a in anchors:
            for step in (-1, 1):
                i, seen = a, 0
                while seen < self._window:
                    i += step
                    if i < 0 or i >= n:
                        break
                    k = keys[i]
                    if not k:
                        continue
                    seen += 1
                    if i not in anchor_set and len(k) <= self._max_chars and _LETTER.search(k):
                        out.add(i)
        return sorted(out)


def _new_memo():
    """The compiled strip's verdicts on short keys, across documents (bounded; shared by threads under its lock)."""
    return _kernels.line_memo() if _kernels is not None else None


def _longest_match(pattern: str) -> int:
    """The most characters a match of the pattern can span, or -1 where that is unbounded (``*``, ``+``) or
    unknown: the line kernel matches no key longer than this (it cannot match) and builds none it need not."""
    try:
        import re._parser as parser  # Python's own regex parser: its width is what its matcher can span
    except ImportError:  # pragma: no cover - before 3.11
        return -1
    try:
        longest = parser.parse(pattern).getwidth()[1]
    except Exception:  # noqa: BLE001 - a parser that changed shape: no bound, only slower
        return -1
    return longest if longest < 1 << 31 else -1


_ALL_ASCII = (1 << 128) - 1


def first_chars(pattern: str) -> bytes | None:
    """A 128-bit map of the ASCII characters a match of the pattern can begin with (a superset), or None where
    that is every one or not known. The line kernel asks the regex only about keys that begin with one of them or
    with any non-ASCII character: on the 10-K sample half of the 48,654 distinct short lines began otherwise ("$",
    "Total", "(1)" against "Table of Contents", "Page 3" and page numbers), each a regex call with the GIL held.
    Each literal, class and category is asked of the regex engine itself, with the flags in force there, against
    all 128 characters, so case folding (``(?i)k`` takes the Kelvin sign's "K") is the engine's own."""
    try:
        import re._constants as c
        import re._parser as parser
    except ImportError:  # pragma: no cover - before 3.11
        return None
    try:
        parsed = parser.parse(pattern)
        bits, _ = _first_of(list(parsed), parsed.state.flags, c)
    except Exception:  # noqa: BLE001 - a parser that changed shape: no filter, only slower
        return None
    return None if bits == _ALL_ASCII else bits.to_bytes(16, "little")


def _ascii_matching(source: str, flags: int) -> int:
    """The ASCII characters that ``source`` (one character's worth of pattern) fullmatches, as bits."""
    one = re.compile(source, flags & (re.IGNORECASE | re.ASCII | re.DOTALL))
    return sum(1 << x for x in range(128) if one.fullmatch(chr(x)))


def _first_of(items: list, flags: int, c) -> tuple[int, bool]:
    """(first-character bits, whether the sequence can match empty) of a parsed sequence."""
    bits = 0
    for op, av in items:
        got, nullable = _first_item(op, av, flags, c)
        bits |= got
        if not nullable:
            return bits, False
    return bits, True


_CATEGORIES = {"CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_SPACE": r"\s", "CATEGORY_NOT_SPACE": r"\S",
               "CATEGORY_WORD": r"\w", "CATEGORY_NOT_WORD": r"\W"}


def _first_item(op, av, flags: int, c) -> tuple[int, bool]:
    if op is c.LITERAL:
        return _ascii_matching(re.escape(chr(av)), flags), False
    if op is c.NOT_LITERAL:
        return _ALL_ASCII & ~_ascii_matching(re.escape(chr(av)), flags), False
    if op is c.ANY:
        return _ALL_ASCII, False
    if op is c.IN:
        bits, negate = 0, False
        for iop, iav in av:
            if iop is c.NEGATE:
                negate = True
            elif iop is c.LITERAL:
                bits |= _ascii_matching(re.escape(chr(iav)), flags)
            elif iop is c.RANGE:
                bits |= _ascii_matching(f"[{re.escape(chr(iav[0]))}-{re.escape(chr(iav[1]))}]", flags)
            elif iop is c.CATEGORY and str(iav) in _CATEGORIES:
                bits |= _ascii_matching(_CATEGORIES[str(iav)], flags)
            else:
                return _ALL_ASCII, False
        return (_ALL_ASCII & ~bits if negate else bits), False
    if op is c.BRANCH:
        bits, nullable = 0, False
        for alternative in av[1]:
            got, empty = _first_of(list(alternative), flags, c)
            bits, nullable = bits | got, nullable or empty
        return bits, nullable
    if op is c.SUBPATTERN:
        _, add, remove, sub = av
        return _first_of(list(sub), (flags | add) & ~remove, c)
    if op in (c.MAX_REPEAT, c.MIN_REPEAT) or op is getattr(c, "POSSESSIVE_REPEAT", None):
        low, _, sub = av
        bits, nullable = _first_of(list(sub), flags, c)
        return bits, nullable or low == 0
    if op is getattr(c, "ATOMIC_GROUP", None):
        return _first_of(list(av), flags, c)
    if op is c.AT:  # an anchor takes no character
        return 0, True
    return _ALL_ASCII, True  # a lookaround, a group reference, anything else: no filter from here on


_LETTER = re.compile(r"[^\W\d_]")
_FLAGS = re.compile(r"\(\?([aiLmsux]+)\)")


def scoped(pattern: str) -> str:
    """The pattern as one branch of an alternation: in a group, its leading global flags ("(?i)") scoped to it (a
    form Python's re and RE2 both read)."""
    m = _FLAGS.match(pattern)
    return f"(?{m.group(1)}:{pattern[m.end():]})" if m else f"(?:{pattern})"
