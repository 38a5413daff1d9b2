"""The compiled text kernels (lmops/_textkernels.c) against the Python definitions they replace.

Each kernel must return exactly what its *_py function returns, on random strings drawn from every class of
character the definitions treat apart (controls, every whitespace character, invisible format characters,
combining marks, characters of 1, 2 and 4 bytes' width, the one letter whose lower case is two characters), so
that a snapshot's bytes never depend on whether the kernels were built."""

import os
import random
import re
from collections import Counter
import unicodedata

import pytest

from lmops.text import NFC_SAFE_BELOW, OTHER_SPACES, Boilerplate, nfc_safe, normalize_text, normalize_text_py
from lmops.tasks.dedup import sign_py
from lmops.tasks.ingest import _SURROGATE, chunk_text_py

try:  # the compiled module itself, whatever LMOPS_PURE_PYTHON tells ingest to use
    from lmops import _textkernels as K
except ImportError:
    K = None

# Only where nothing was built: test_the_kernels_are_built_where_make_setup_ran then fails, unless LMOPS_PURE_PYTHON=1
# declares a machine without a C compiler, where there is nothing to compare
built = pytest.mark.skipif(K is None, reason="no compiled kernels to compare (LMOPS_PURE_PYTHON=1: no C compiler here)")

ALPHABET = list("ab AZ.!?_7\n\n\n\x00\x0b\x0c\x1c\x1f\x7f\x85\u200b\u200c\u2060\ufeff\xad\u180e") + list(OTHER_SPACES) + list(
    "e\u0301ÉİΣσ²\u0100\U0001F600\U00010D50"
)


def _texts(n: int, longest: int = 40, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    return ["".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(0, longest))) for _ in range(n)]


def test_the_kernels_are_built_where_make_setup_ran():
    # `make setup` compiles them (gcc and Python's headers are part of this stack); without them ingest is ~2x slower
    assert K is not None or os.environ.get("LMOPS_PURE_PYTHON")


@built
def test_normalization_is_the_python_definition():
    for t in _texts(30_000):
        assert K.fold(unicodedata.normalize("NFC", t)) == normalize_text_py(t), repr(t)


def _safe_chars() -> set[str]:
    bits = nfc_safe()
    return {chr(c) for c in range(NFC_SAFE_BELOW) if bits[c >> 3] >> (c & 7) & 1}


def test_the_nfc_bitmap_is_the_quick_check_over_every_character():
    # the definition over all of Unicode (nfc_safe looks for canonical pairs below its bound only)
    seconds = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))
    for x in range(0x110000):
        d = unicodedata.decomposition(chr(x))
        if d and d[0] != "<" and len(d.split()) == 2:
            seconds.add(int(d.split()[1], 16))
    expected = {chr(c) for c in range(NFC_SAFE_BELOW) if c not in seconds and not unicodedata.combining(chr(c))
                and unicodedata.normalize("NFC", chr(c)) == chr(c)}
    safe = _safe_chars()
    assert safe == expected
    assert {"a", "é", "\u2019", "\u201c", "\u2014", "\u2022", "\xa0", "\u200b"} <= safe
    # a combining mark, Hangul and Oriya vowels that compose with the letter before, singletons NFC replaces
    assert not {"\u0301", "\u1161", "\u11a8", "\u0b3e", "\u2000", "\u2126", "\u212b", "\u0344"} & safe
    # the property itself: no pair of them changes under NFC (every one after and before a sample of the others)
    rnd = random.Random(3)
    ordered = sorted(safe)
    for other in rnd.sample(ordered, 40):
        for c in ordered:
            for pair in (other + c, c + other):
                assert unicodedata.normalize("NFC", pair) == pair, [hex(ord(x)) for x in pair]


@built
def test_folding_with_the_nfc_bitmap_is_folding_after_nfc():
    # what NFC changes: a letter and its accent, Hangul jamo and a syllable, Oriya vowel parts, singletons
    extra = list("e\u0301A\u030a\u1100\u1161\u11a8\uac00\u0b47\u0b3e\u2000\u2126\u212b\u304b\u3099\u2019\u2014")
    rnd = random.Random(4)
    alphabet, folded = ALPHABET + extra, 0
    for _ in range(30_000):
        t = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 30)))
        fast = K.fold(t, nfc_safe())
        assert fast is None or fast == K.fold(unicodedata.normalize("NFC", t)), repr(t)
        assert normalize_text(t) == normalize_text_py(t), repr(t)
        folded += fast is not None
    assert folded > 3000  # (the texts of safe characters alone are folded in one pass)


@built
def test_chunking_is_the_python_definition():
    for t in _texts(10_000, longest=60):
        for x in (t, normalize_text_py(t)):
            for size in (1, 3, 8, 25):
                assert K.chunk(x, size) == chunk_text_py(x, size), (repr(x), size)


@built
def test_page_furniture_removal_is_the_python_definition():
    rnd = random.Random(1)
    lines = ["12", " 7 ", "Table of Contents", "ACME CORP", "", "\u200b", "We grew.", "Revenue rose 4%.", "and",
             "A\u200bCME CORP", "²", "_", "4,210", "(12)", " \xad1\u200b2 ", "É" * 21, "É" * 20, "\U0001F600 CORP", "\u3000page 3 of 9\t"]
    lines += ["A much longer line of prose that no page-number pattern could ever match whole", "Table of Contentsss", "12345"]
    # unbounded patterns, and bounded ones, whose longest match (17) lets the kernel skip longer lines unmatched
    bounded = [r"[0-9]{1,4}", r"(?i)table of contents", r"(?i)page [0-9]{1,2} of [0-9]{1,2}"]
    for patterns, longest in (([r"[0-9]+", r"(?i)table of contents", r"(?i)page [0-9]+ of [0-9]+"], -1), (bounded, 17)):
        for window in (1, 2):
            for repeats in (0, 1, 2, 3):
                boiler = Boilerplate(patterns, repeats, 20, window)
                assert boiler._max_key == longest
                memo, asked = K.line_memo(), []

                def fullmatch(key):
                    asked.append(key)
                    return boiler._line.fullmatch(key)

                for _ in range(3000):
                    text = "\n".join(rnd.choice(lines) for _ in range(rnd.randint(0, 30)))
                    fast = K.strip_lines(text, fullmatch, repeats, 20, window, memo, boiler._max_key, boiler._first)
                    assert fast == boiler.strip_py(text), (repr(text), window, repeats)
                # short keys' verdicts are remembered across documents: asked once (but where an invisible character
                # was taken out of the line: "12" from " \xad1\u200b2 ")
                once = Counter(k for k in asked if k in {"7", "Table of Contents", "4,210", "page 3 of 9"})
                assert len(once) == 4 and set(once.values()) == {1}, once
                # and a key that no match can begin with is not asked at all ("and", "ACME CORP", "(12)", "_")
                assert not {k for k in asked if k[0] in "aAW(_"}, set(asked)


def test_the_first_characters_of_a_match_are_a_superset_found_by_the_regex_engine():
    from lmops.config import BoilerplateParams
    from lmops.text import first_chars

    def chars(p):
        bits = first_chars(p)
        return None if bits is None else {chr(x) for x in range(128) if bits[x >> 3] >> (x & 7) & 1}

    assert chars(Boilerplate(BoilerplateParams().line_patterns, 3, 80)._line.pattern) == set("0123456789-IOPTiopt") | set(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")
    assert chars(r"(?i)k") == {"k", "K"} and chars(r"(?i)\u017f") == {"s", "S"}  # the Kelvin sign and the long s fold to ASCII
    assert chars(r"a*b") == {"a", "b"} and chars(r"(?:x|)y") == {"x", "y"} and chars(r"\bq") == {"q"} and chars(r"\d+") == set("0123456789")
    assert chars(r"[^a]") == {chr(x) for x in range(128)} - {"a"} and chars(r"(?i)[^a]") == {chr(x) for x in range(128)} - {"a", "A"}
    assert chars(r".") is None and chars(r"(?=a)b") is None and chars(r"(a)?\1") is None and chars(r"(a)\1") == {"a"}
    # sound: whatever fullmatches begins with a character in the set (or a non-ASCII one), on patterns of every kind
    patterns = [r"(?i)page [0-9]{1,3}", r"(?:page\s{0,2})?[-–—]?\s?\d{1,2}", r"(?i:ab|c)d?|e+", r"[a-c]?[^xyz]", r"\W\w", r"(?i)[x-z]\d",
                r"(?>ab|a)c", r"a{0,2}+b", r"(?i:[^b-y])", r"\S\s", r"(?-i:a)(?i:b)"]
    alphabet = "abcdeABCDExyzXYZpPgG 0123456789-–—_!é\u212a"
    rnd = random.Random(6)
    for p in patterns:
        allowed, rx = chars(p), re.compile(p)
        for _ in range(20_000):
            t = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 6)))
            if rx.fullmatch(t) and ord(t[0]) < 128:
                assert allowed is None or t[0] in allowed, (p, t)


_MEMO_STRESS = """
import threading
from lmops import _textkernels as K
from lmops.text import Boilerplate
b = Boilerplate([r"[0-9]{1,3}", r"(?i)table of contents"], 2, 20)
memo = K.line_memo()
def work(t):
    short = ["\\n".join(f"t{t}k{i}x{j}" for j in range(20)) for i in range(50)]
    for i in range(300):
        # a long text (new keys: looked up without the GIL, then learnt) or a short one (looked up holding the GIL)
        d = "\\n".join(f"{t}-{i}-{j}" for j in range(5000)) if i % 3 == 0 else short[i % 50] + f"\\nq{t}{i}"
        K.strip_lines(d, b._line.fullmatch, 2, 20, 1, memo, b._max_key, b._first)
threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
[x.start() for x in threads]
[x.join() for x in threads]
print("done")
"""


@built
def test_threads_sharing_a_memo_never_wait_for_each_other():
    # a thread that waited for the memo's lock takes the GIL back holding it; one that held the GIL while waiting for
    # the lock hung both (every run of this, before memo_acquire): long texts and short ones on four threads
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _MEMO_STRESS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr[-2000:]


@built
def test_line_feeds_are_found_in_every_width_at_every_place_in_a_word():
    # the kernels look for line feeds a 64-bit word at a time (four 2-byte or two 4-byte characters): a line feed in
    # every lane, runs longer and shorter than a word, and characters holding the byte 0x0A that are no line feed
    boiler = Boilerplate([r"[0-9]{1,3}"], 2, 20)
    for filler in ("a", "\u010a", "\u0a0a", "\U0001000a", "\U000a0a0a", "é"):
        for n in range(0, 12):
            for at in range(n + 1):
                for tail in ("", "7", "\n", "\n\n" + filler * 3):
                    t = filler * at + "\n" + filler * (n - at) + "\n\n" + "12\n" + filler * n + tail
                    assert K.strip_lines(t, boiler._line.fullmatch, 2, 20, 1, K.line_memo(), boiler._max_key, boiler._first) == boiler.strip_py(t), repr(t)
                    for size in (2, 5):
                        assert K.chunk(t, size) == chunk_text_py(t, size), (repr(t), size)


@built
def test_signing_is_the_python_definition_for_every_character():
    for t in _texts(5_000):
        for role in (0, 1, 3):
            assert K.sign(t, role, 12345) == sign_py(t, role, 12345), repr(t)
            assert K.sign(t, role, 12345, False) == sign_py(t, role, 12345, False) == (K.sign(t, role, 12345)[0], K.sign(t, role, 12345)[1], None)
    # every character with a lower case, every whitespace character and a sample of the rest lower-case and split
    # alike (a difference would change the key or the word count)
    cps = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    special = [c for c in cps if c.lower() != c or c.isspace()]
    assert len(special) > 1400
    for part in (special, random.Random(2).sample(cps, 30_000)):
        for i in range(0, len(part), 2048):
            text = " ".join(part[i : i + 2048]) + " " + "".join(part[i : i + 2048])
            assert K.sign(text, 2, 99) == sign_py(text, 2, 99), hex(ord(part[i]))


@built
def test_a_list_of_texts_is_signed_as_their_join_by_spaces():
    rnd = random.Random(5)
    texts = _texts(600)
    for _ in range(2000):
        parts = [rnd.choice(texts) for _ in range(rnd.randint(1, 6))] + [""] * rnd.randint(0, 1)
        rnd.shuffle(parts)
        for bins in (True, False):
            assert K.sign(parts, 1, 7, bins) == K.sign(" ".join(parts), 1, 7, bins) == sign_py(parts, 1, 7, bins), parts
    assert K.sign([], 0, 7) == K.sign("", 0, 7)
    with pytest.raises(TypeError):
        K.sign(["a", 1], 0, 7)


@built
def test_the_surrogate_check_is_the_regex():
    for t in _texts(5_000) + ["a\ud800", "\udfff", "\U0001F600\udc00", "é\udbff", "\ud7ff\ue000"]:
        assert K.has_surrogate(t) == (_SURROGATE.search(t) is not None), repr(t)
    # the scan reads blocks of 64 characters: a surrogate at every place around their edges, in both widths
    for wide in ("\u20ac", "\U0001F600"):
        for n in (1, 63, 64, 65, 128, 130):
            assert not K.has_surrogate(wide * n)
            for at in range(n):
                assert K.has_surrogate(wide * at + "\udc00" + wide * (n - at - 1)), (hex(ord(wide)), n, at)
