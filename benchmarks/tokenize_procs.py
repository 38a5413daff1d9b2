"""Tokenization with 1 and 2 datasets.map processes on the same corpus, same run (issue 14, item 5).

Run: .venv/bin/python benchmarks/tokenize_procs.py [--corpus CORPUS.parquet]
Without --corpus it ingests the 26.7 MB 10-K file first. Each variant tokenizes into its own empty cache, so neither
reads the other's token ids; the tokenizer (trained wordpiece, params.yaml's settings) is trained once, before the clock.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import lmops  # noqa: F401


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    import datasets

    from lmops.config import IngestParams, SourceParams, TokenizeParams
    from lmops.tasks.ingest import ingest_corpus_only
    from lmops.tasks.tokenize import _Texts, train_tokenizer

    work = Path(tempfile.mkdtemp(prefix="lmops-tok-bench-"))
    corpus = Path(args.corpus) if args.corpus else None
    if corpus is None:
        src = SourceParams(name="sec10k", role="unlabeled", format="jsonl", path="../shared/data/corpus_sec_10k/sec10k_items_text.jsonl",
                           text_columns=["item1", "item1a", "item7", "item7a"])
        ingest_corpus_only(IngestParams(sources=[src], chunk_chars=2000), work / "data")
        corpus = work / "data" / "corpus.parquet"
    params = TokenizeParams(vocab_size=6000)
    ds = datasets.Dataset.from_parquet(str(corpus), columns=["text"], cache_dir=str(work / "hf"))
    tokenizer = train_tokenizer(_Texts(ds, params.map_batch_size), params)
    results = []
    for n in args.procs:
        cache = work / f"ids-{n}"
        cache.mkdir()
        t0 = time.perf_counter()
        ids = ds.map(lambda b: {"input_ids": tokenizer(b["text"], add_special_tokens=False)["input_ids"]}, batched=True,
                     batch_size=params.map_batch_size, remove_columns=["text"], num_proc=n if n > 1 else None,
                     cache_file_name=str(cache / "ids.arrow"))
        tokens = sum(len(x) for b in ids.iter(batch_size=10_000) for x in b["input_ids"])
        results.append({"num_proc": n, "seconds": round(time.perf_counter() - t0, 2), "rows": len(ds), "tokens": tokens})
    base = results[0]["seconds"]
    for r in results:
        r["speedup"] = round(base / r["seconds"], 2)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"command": "python benchmarks/tokenize_procs.py" + (f" --corpus {args.corpus}" if args.corpus else ""), "results": results}))


if __name__ == "__main__":
    main()
