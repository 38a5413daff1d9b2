"""Duplicate detection over the ingested documents: exact (case- and whitespace-insensitive hashes) and
near duplicates (MinHash with LSH banding)."""

from __future__ import annotations

import hashlib


class NearDuplicates:
    """MinHash over word 5-grams with LSH banding: flags a document whose estimated Jaccard similarity
    to an earlier one (same role) reaches ``threshold``. 64 hashes = 16 bands × 4 rows."""

    PERMS, BANDS = 64, 16

    def __init__(self, threshold: float, seed: int = 1):
        import numpy as np

        self.threshold = threshold
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, (1 << 61) - 1, self.PERMS, dtype=np.uint64)
        self._b = rng.integers(0, (1 << 61) - 1, self.PERMS, dtype=np.uint64)
        self._buckets: dict[tuple, list[int]] = {}
        self._sigs: list = []
        self._words: dict[str, int] = {}

    # odd multipliers that mix five word hashes into one 5-gram hash (mod 2^64)
    _MIX = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD)

    def _word_ids(self, words: list[str]):
        import numpy as np

        cache = self._words
        out = np.empty(len(words), dtype=np.uint64)
        for i, w in enumerate(words):
            h = cache.get(w)
            if h is None:  # a stable hash (Python's hash() is salted per process): same data, same decisions
                h = cache[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            out[i] = h
        return out

    def signature(self, text: str):
        import numpy as np

        ids = self._word_ids(text.lower().split())
        n = max(1, len(ids) - 4)
        grams = np.zeros(n, dtype=np.uint64)
        # each shingle's hash combines its 5 word hashes, vectorised over the document (uint64 wraps)
        for k, mix in enumerate(self._MIX[: min(5, len(ids))]):
            grams += ids[k : k + n] * np.uint64(mix)
        grams = np.unique(grams)
        # (a*h + b) mod 2^64 as a universal-ish hash family; the min over shingles per permutation.
        return (np.outer(grams, self._a) + self._b).min(axis=0)

    def seen_before(self, role: str, text: str) -> bool:
        import numpy as np

        if len(text.split()) < 8:  # too short for shingles to mean anything; exact dedup covers these
            return False
        sig = self.signature(text)
        rows = self.PERMS // self.BANDS
        keys = [(role, b, sig[b * rows : (b + 1) * rows].tobytes()) for b in range(self.BANDS)]
        candidates = {i for k in keys for i in self._buckets.get(k, [])}
        if any(float(np.mean(self._sigs[i] == sig)) >= self.threshold for i in candidates):
            return True
        idx = len(self._sigs)
        self._sigs.append(sig)
        for k in keys:
            self._buckets.setdefault(k, []).append(idx)
        return False


def text_key(text: str) -> str:
    """Exact-duplicate key: the text with case and whitespace folded."""
    return hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()


