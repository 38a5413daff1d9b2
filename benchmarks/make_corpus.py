"""A large generated finance corpus for the scale benchmark and test: JSONL documents re-sampled from the sentences
of the bundled 10-K items and FOMC statements, with planted near-duplicates.

Run: .venv/bin/python benchmarks/make_corpus.py --mb 1000 --out /tmp/corpus  (writes corpus.jsonl, planted.json)

Each document is 40 sentences drawn at random (seeded); every 20th is followed, a few documents later, by a copy
with one word in 400 replaced and its line breaks moved (a near duplicate at Jaccard ~0.95 over word 5-grams).
planted.json lists the (copy, original) line numbers, so recall and precision of near-duplicate detection can be
measured.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = re.compile(r"(?<=[.!?])\s+")


def sentences(sec10k: Path, fomc: Path) -> list[str]:
    pool = []
    if sec10k.exists():
        for line in sec10k.open():
            rec = json.loads(line)
            for field in ("item1", "item1a", "item7", "item7a"):
                pool += SENTENCE.split(" ".join((rec.get(field) or "").split()))
    for path in sorted(fomc.rglob("*.txt")):
        pool += SENTENCE.split(" ".join(path.read_text(errors="replace").split()))
    return [s for s in pool if 40 <= len(s) <= 600]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=1000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sec10k", default=str(ROOT.parent / "shared/data/corpus_sec_10k/sec10k_items_text.jsonl"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pool = sentences(Path(args.sec10k), ROOT / "samples/finance/fomc_statements")
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    planted, pending = [], []  # pending: (line to emit at, original line, text)
    size, line, target = 0, 0, args.mb * 1e6
    with open(out / "corpus.jsonl", "w") as fh:
        def emit(text: str) -> int:
            nonlocal size, line
            data = json.dumps({"text": text}) + "\n"
            fh.write(data)
            size += len(data.encode())
            line += 1
            return line

        while size < target:
            text = "\n".join(rng.choice(pool) for _ in range(40))
            n = emit(text)
            if n % 20 == 0:
                words = text.split(" ")
                for _ in range(max(1, len(words) // 400)):
                    words[rng.randrange(len(words))] = rng.choice(["results", "quarter", "rates", "growth"])
                pending.append((n + rng.randint(1, 5), n, " ".join(words).replace("\n", " ", 3)))
            while pending and pending[0][0] <= line:
                _, original, copy = pending.pop(0)
                planted.append((emit(copy), original))
    (out / "planted.json").write_text(json.dumps(planted))
    print(json.dumps({"mb": round(size / 1e6, 1), "documents": line, "planted": len(planted)}))


if __name__ == "__main__":
    main()
