"""Duplicate detection over the ingested documents: exact (case- and whitespace-insensitive hashes) and
near duplicates (MinHash with LSH banding).

Split in two so that neither holds the corpus: each batch of documents gets its keys and signatures where it is
cleaned (``exact_keys``, ``MinHasher``), and ``resolve`` decides afterwards from those arrays alone — 16 bytes of
key, 64 bytes of band hashes and a bit per document in memory, the 512-byte signatures in a file it reads only
for candidate pairs. The decision is the sequential one: a document is a duplicate when an earlier *kept*
document of the same role has its key, or shares an LSH band with it and reaches the similarity threshold.
"""

from __future__ import annotations

import hashlib
from typing import Any

PERMS, BANDS = 64, 16
MIN_WORDS = 8  # shorter documents get no signature: too few shingles to mean anything; exact dedup covers them
# Candidates compared per document and LSH bucket: the earliest members of the bucket. A bucket shared by more
# documents than this is pathological (one text repeated with small edits thousands of times); its later
# members are still compared with the first CAP, which is where the kept copy sits.
CAP = 64

# odd multipliers that mix five word hashes into one 5-gram hash (mod 2^64)
_MIX = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD)
_ROLES = {"labeled": 1, "unlabeled": 2}


class MinHasher:
    """MinHash over word 5-grams: 64 (a*h + b) mod 2^64 permutations, seeded, so every process (and every
    Dask worker) computes the same signature for the same text."""

    def __init__(self, seed: int = 1):
        import numpy as np

        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, (1 << 61) - 1, PERMS, dtype=np.uint64)
        self._b = rng.integers(0, (1 << 61) - 1, PERMS, dtype=np.uint64)
        self._words: dict[str, int] = {}

    def _word_ids(self, words: list[str]):
        import numpy as np

        cache = self._words
        if len(cache) > 2_000_000:  # a bounded cache: a long-running worker must not grow without limit
            cache.clear()
        get = cache.get
        ids = [get(w) for w in words]
        if None in ids:
            for i, w in enumerate(words):
                if ids[i] is None:  # a stable hash (Python's hash() is salted per process): same data, same decisions
                    ids[i] = cache[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little", signed=True)
        # kept signed (small Python ints convert to int64 several times faster than to uint64); the same 64 bits
        return np.array(ids, dtype=np.int64).view(np.uint64)

    def signature(self, text: str):
        import numpy as np

        ids = self._word_ids(text.lower().split())
        n = max(1, len(ids) - 4)
        grams = np.zeros(n, dtype=np.uint64)
        # each shingle's hash combines its 5 word hashes, vectorised over the document (uint64 wraps)
        for k, mix in enumerate(_MIX[: min(5, len(ids))]):
            grams += ids[k : k + n] * np.uint64(mix)
        # (a*h + b) mod 2^64 per permutation, the minimum over the shingles (a repeated shingle changes no minimum),
        # 64k shingles at a time: a 10 MB one-line document would otherwise need a gigabyte of products
        sig = np.full(PERMS, np.iinfo(np.uint64).max, dtype=np.uint64)
        for s in range(0, len(grams), 65536):
            np.minimum(sig, (np.outer(grams[s : s + 65536], self._a) + self._b).min(axis=0), out=sig)
        return sig

    def signatures(self, docs: list[str]):
        """(signatures (n, 64) uint64, has_signature (n,) bool); documents under MIN_WORDS words get zeros."""
        import numpy as np

        sigs = np.zeros((len(docs), PERMS), dtype=np.uint64)
        has = np.zeros(len(docs), dtype=bool)
        for i, doc in enumerate(docs):
            if len(doc.split()) >= MIN_WORDS:
                sigs[i] = self.signature(doc)
                has[i] = True
        return sigs, has


_HASHER: MinHasher | None = None


def minhasher() -> MinHasher:
    """One per process: its word-hash cache pays off across batches."""
    global _HASHER
    if _HASHER is None:
        _HASHER = MinHasher()
    return _HASHER


def exact_keys(role: str, docs: list[str]):
    """16-byte keys of the documents with case and whitespace folded, distinct per role."""
    import numpy as np

    salt = role.encode() + b"\0"
    return np.array([hashlib.blake2b(salt + " ".join(d.lower().split()).encode(), digest_size=16).digest() for d in docs],
                    dtype="V16").reshape(len(docs))


def band_hashes(sigs):
    """(n, 16) uint32: each LSH band (4 signature rows) folded to one number. A 32-bit fold lets unrelated
    documents share a bucket now and then; every candidate is checked on the full signature, so that costs a
    comparison, never a wrong decision."""
    import numpy as np

    rows = PERMS // BANDS
    mixed = (sigs.reshape(len(sigs), BANDS, rows) * np.array(_MIX[:rows], dtype=np.uint64)).sum(axis=2, dtype=np.uint64)
    return (mixed >> np.uint64(32)).astype(np.uint32)


def resolve(keys, roles, has_sig, bands, sigs, threshold: float | None) -> dict[str, Any]:
    """Decide every document at once, as a sequential pass in document order would.

    ``keys`` (n,) V16, ``roles`` (n,) small ints, ``has_sig`` (n,) bool, ``bands`` (n, 16) uint32, ``sigs`` an
    (n, 64) uint64 array or memory map (read only at candidate rows). Returns boolean masks ``exact`` and
    ``near`` (the duplicates of each sort) and ``pairs`` (how many candidate pairs were compared).
    """
    import numpy as np

    n = len(keys)
    exact = np.ones(n, dtype=bool)
    if n:
        _, first = np.unique(keys, return_index=True)  # the first occurrence of each key (roles are in the key)
        exact[first] = False
    near = np.zeros(n, dtype=bool)
    if threshold is None or n == 0:
        return {"exact": exact, "near": near, "pairs": 0}
    eligible = np.flatnonzero(~exact & has_sig)
    pairs = _candidate_pairs(eligible, roles, bands)
    if len(pairs):
        sims = np.empty(len(pairs))
        for s in range(0, len(pairs), 65536):  # blocks: the signature rows of 64k pairs at a time
            i, j = pairs[s : s + 65536, 0], pairs[s : s + 65536, 1]
            sims[s : s + 65536] = (np.asarray(sigs[i]) == np.asarray(sigs[j])).mean(axis=1)
        similar = pairs[sims >= threshold]
        similar = similar[np.lexsort((similar[:, 0], similar[:, 1]))]
        kept = ~exact
        for i, j in similar.tolist():  # ascending j: whether i was kept is final by the time j is decided
            if kept[i] and kept[j]:
                kept[j] = False
                near[j] = True
    return {"exact": exact, "near": near, "pairs": int(len(pairs))}


def _candidate_pairs(eligible, roles, bands):
    """(p, 2) int64 pairs (i < j) of eligible documents of one role sharing an LSH bucket; j is paired with the
    first CAP earlier members of each bucket."""
    import numpy as np

    found = []
    for b in range(bands.shape[1]):
        h = bands[eligible, b].astype(np.uint64) | (roles[eligible].astype(np.uint64) << np.uint64(32))
        order = np.argsort(h, kind="stable")  # stable: within a bucket, document order
        hs, idx = h[order], eligible[order]
        starts = np.flatnonzero(np.r_[True, hs[1:] != hs[:-1]])
        sizes = np.diff(np.r_[starts, len(hs)])
        for s, k in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
            members = idx[s : s + k]
            for pos in range(1, k):
                heads = members[: min(pos, CAP)]
                found.append(np.column_stack([heads, np.full(len(heads), members[pos])]))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found).astype(np.int64), axis=0)


def role_code(role: str) -> int:
    return _ROLES[role]


def text_key(text: str) -> str:
    """Exact-duplicate key: the text with case and whitespace folded."""
    return hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()
