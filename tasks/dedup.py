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

from lmops.text import _kernels

PERMS, BANDS = 64, 16  # signature positions (one-permutation bins), LSH bands of 4
DENSIFY_TRIES = 512
MIN_WORDS = 8  # shorter documents get no signature: too few shingles to mean anything; exact dedup covers them
# Candidates compared per document and LSH bucket: the earliest members of the bucket. A bucket shared by more
# documents than this is pathological (one text repeated with small edits thousands of times); its later
# members are still compared with the first CAP, which is where the kept copy sits.
CAP = 64

# odd multipliers that mix five word hashes into one 5-gram hash (mod 2^64); lmops/_textkernels.c has the same
_MIX = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD)
# a role's documents are deduplicated among themselves; auxiliary = labeled rows kept only for their entity labels,
# so that one never knocks a labeled row out of the splits
_ROLES = {"labeled": 1, "unlabeled": 2, "auxiliary": 3}


class MinHasher:
    """MinHash signatures of word 5-grams by one-permutation hashing (Li, Owen & Zhang 2012): each shingle is
    hashed once, its top 6 bits pick one of 64 bins and a bin keeps its smallest hash; bins no shingle fell in
    borrow the value of another bin by optimal densification (Shrivastava 2017), so two signatures agree in a
    position with probability the Jaccard similarity of the shingle sets, as with 64 independent permutations, at
    1/64th of the hashing. Seeded, so every process (and every Dask worker) signs the same text the same way.
    The hashing itself is ``sign`` (one pass over each document: the compiled kernel, or ``sign_py``)."""

    def __init__(self, seed: int = 1):
        import numpy as np

        rng = np.random.default_rng(seed)
        self.seed = int(rng.integers(1, (1 << 63) - 1, dtype=np.uint64) | np.uint64(1))
        # where an empty bin looks next, attempt after attempt; the same sequence for every document (that is what
        # keeps the estimate unbiased): 64 bins × DENSIFY_TRIES candidate bins
        self._probe = rng.integers(0, PERMS, (DENSIFY_TRIES, PERMS))

    def signature(self, text: str):
        """One document's signature (64,) uint64 (any length: a document under MIN_WORDS words is signed too)."""
        import numpy as np

        return self._densify(np.frombuffer(sign(text, 0, self.seed)[2], dtype=np.uint64).reshape(1, PERMS))[0]

    def signatures(self, docs: list[str], signed=None):
        """(signatures (n, 64) uint64, has_signature (n,) bool); documents under MIN_WORDS words get zeros.
        ``signed``: the documents' ``sign_documents``, where the caller has them already."""
        import numpy as np

        signed = sign_documents(0, docs, self.seed) if signed is None else signed
        has = np.array([s[1] >= MIN_WORDS for s in signed], dtype=bool)
        sigs = np.zeros((len(docs), PERMS), dtype=np.uint64)
        if has.any():
            raw = b"".join(s[2] for s, h in zip(signed, has.tolist()) if h)
            sigs[has] = self._densify(np.frombuffer(raw, dtype=np.uint64).reshape(-1, PERMS))
        return sigs, has

    def _densify(self, sigs):
        import numpy as np

        empty = sigs == np.iinfo(np.uint64).max
        if not empty.any():
            return sigs
        out = sigs.copy()
        todo = empty.copy()
        for attempt in range(DENSIFY_TRIES):
            src = self._probe[attempt]
            take = todo & ~empty[:, src]
            out[take] = sigs[:, src][take]
            todo &= ~take
            if not todo.any():
                break
        else:  # 64 bins, at least one full, 512 random looks: (63/64)^512 ≈ 3e-4 per empty bin of a one-shingle document
            rows, cols = np.nonzero(todo)
            for r, c in zip(rows.tolist(), cols.tolist()):
                out[r, c] = sigs[r][~empty[r]][0]
        return out


_HASHER: MinHasher | None = None


def minhasher() -> MinHasher:
    """One per process: its word-hash cache pays off across batches."""
    global _HASHER
    if _HASHER is None:
        _HASHER = MinHasher()
    return _HASHER


def sign_documents(role: int | str | list[str], docs: list, seed: int | None = None) -> list[tuple[bytes, int, bytes]]:
    """``sign`` of every document (a str, or a list of them signed as joined by spaces; role: one for all, or one per
    document; seed: the process's MinHasher's)."""
    seed = minhasher().seed if seed is None else seed
    codes = [_code(role)] * len(docs) if not isinstance(role, list) else [_code(r) for r in role]
    return [sign(d, c, seed) for d, c in zip(docs, codes)]


def _code(role: int | str) -> int:
    return role if isinstance(role, int) else _ROLES[role]


def exact_keys(role: str | list[str], docs: list[str], signed=None):
    """16-byte keys of the documents with case and whitespace folded, distinct per role (one for all, or one per
    document; ``signed``: their ``sign_documents``, where the caller has them)."""
    import numpy as np

    signed = sign_documents(role, docs) if signed is None else signed
    return np.array([s[0] for s in signed], dtype="V16").reshape(len(docs))


_M64 = (1 << 64) - 1
_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3
_KEY_A, _KEY_B = 0x243F6A8885A308D3, 0x13198A2E03707344


def _fmix(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _M64
    return x ^ (x >> 33)


def sign_py(text: str | list[str], role: int, seed: int, bins: bool = True) -> tuple[bytes, int, bytes | None]:
    """(exact key, words, MinHash bins) of one document: the definition of the compiled ``sign``, and its fallback.

    Words: the text lower-cased character by character (``c.lower()[0]``: the simple case mapping, which is
    ``str.lower`` but for U+0130) and split as ``str.split()`` splits. A word's hash: FNV-1a over its code points,
    then MurmurHash3's 64-bit finalizer. The exact key: two 64-bit chains over the word hashes seeded by the role,
    so equal keys mean the same words in the same order (a 64-bit hash per word: a collision in ~1e-8 for ten
    million distinct words). The bins: every 5-gram of word hashes mixed by odd multipliers (a document of fewer
    than 5 words is one shorter gram), finalized with the seed; the top 6 bits choose the bin, which keeps the
    smallest value (``2**64 - 1`` where none fell; ``MinHasher`` densifies). With ``bins`` false: None for them.
    ``text`` may be a list of texts: they are signed as ``" ".join(text)``."""
    import struct

    if not isinstance(text, str):
        text = " ".join(text)

    words = "".join(c.lower()[0] for c in text).split()
    a, b = _fmix(_KEY_A ^ role), _fmix(_KEY_B ^ role)
    hashes = []
    for w in words:
        h = _FNV_OFFSET
        for ch in w:
            h = ((h ^ ord(ch)) * _FNV_PRIME) & _M64
        h = _fmix(h)
        hashes.append(h)
        a, b = _fmix(a ^ h), _fmix((b + h * _MIX[4]) & _M64)
    n = len(hashes)
    key = struct.pack("=2Q", _fmix(a ^ n), _fmix(b ^ n))
    if not bins:
        return key, n, None
    grams = [hashes[i : i + 5] for i in range(len(hashes) - 4)] or [hashes]
    bins = [_M64] * PERMS
    for gram in grams:
        x = _fmix((sum(h * m for h, m in zip(gram, _MIX)) & _M64) ^ seed)
        bins[x >> 58] = min(bins[x >> 58], x)
    return key, n, struct.pack(f"={PERMS}Q", *bins)


sign = _kernels.sign if _kernels is not None else sign_py


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


def words_key(text: str) -> bytes:
    """16 bytes that are equal for texts with the same words up to case (``sign``'s exact key, no role): the
    leakage guard's test of a corpus chunk against the evaluation texts, GIL-free in the compiled kernel. Equal
    where ``text_key`` is, but for U+0130 (lower-cased to "i" here, to "i" + a combining dot there)."""
    return sign(text, 0, 0, False)[0]


def text_key(text: str) -> str:
    """Exact-duplicate key: the text with case and whitespace folded."""
    return hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()
