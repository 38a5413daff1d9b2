"""Tokenize: train a tokenizer on the domain corpus (or reuse the base model's), pack into blocks.

Outputs: ``tokenizer/`` (Hugging Face format), ``blocks.npy`` (int32, [n_blocks, block_size]) and
``tokenize.json``. Packing concatenates documents with a separator so no token is wasted on padding;
``tokenize.packing: false`` gives one padded document per block instead.

The corpus is read as a memory-mapped Arrow dataset and tokenized with ``datasets.map`` in batches;
blocks are written to disk as they fill, so memory stays bounded by one batch, not by the corpus.
Two caches under ``$LMOPS_HOME/cache/tokenize``: token ids per (corpus bytes, tokenizer settings,
base), and finished results per (that + block size + packing), so unchanged inputs are never
re-tokenized, and a new block size re-packs without re-tokenizing. The caches are bounded by
``tokenize.cache_max_gb``: least recently used entries go first, the current run's never.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from lmops.config import TokenizeParams

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GPT_SPECIALS = ["<|endoftext|>", "<pad>", "<mask>"]


@dataclass
class TokenizeSummary:
    tokenizer_dir: str
    blocks_path: str
    vocab_size: int
    documents: int
    tokens: int
    blocks: int
    block_size: int
    trained: bool
    cache_key: str = ""
    cached: bool = False
    packing: bool = True
    padding_fraction: float = 0.0  # share of block positions that are padding (line-by-line mode)
    ids_cached: bool = False  # token ids came from the ids cache (only packing was redone)


def train_tokenizer(texts: Iterable[str], params: TokenizeParams):
    """A WordPiece (BERT) or byte-level BPE (GPT-2) tokenizer trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if params.kind == "wordpiece":
        if iter(texts) is texts:  # a one-shot iterator: keep it for the two passes below
            texts = list(texts)
        normalizer = normalizers.BertNormalizer(lowercase=params.lowercase, clean_text=True, handle_chinese_chars=True)
        # tokenizers' WordPiece trainer numbers "##x" pieces in hash-map order, so the same corpus can give
        # a different vocabulary each run (huggingface/tokenizers#1794). Declaring every "##x" up front
        # fixes their ids and makes training deterministic; the model is rebuilt below so they are not
        # treated as special tokens.
        chars = sorted({c for t in texts for c in normalizer.normalize_str(t) if not c.isspace()})
        trainer = trainers.WordPieceTrainer(
            vocab_size=params.vocab_size, special_tokens=BERT_SPECIALS + [f"##{c}" for c in chars], min_frequency=2
        )
        draft = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        draft.normalizer = normalizer
        draft.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        draft.train_from_iterator(texts, trainer=trainer)
        tok = Tokenizer(models.WordPiece(vocab=draft.get_vocab(), unk_token="[UNK]", continuing_subword_prefix="##"))
        tok.normalizer = normalizer
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        tok.decoder = decoders.WordPiece()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]", model_max_length=512,
        )
    tok = Tokenizer(models.BPE())
    if params.lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=params.vocab_size, special_tokens=GPT_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
        pad_token="<pad>", mask_token="<mask>", model_max_length=1024,
    )


def pack_blocks(tokenizer, texts: list[str], block_size: int, add_cls: bool):
    """Concatenate documents (separator between them) and cut into equal blocks, in memory: the same
    blocks as the streaming packer below, which it runs over one batch.

    With ``add_cls`` (MLM) each block is ``[CLS] … [SEP]`` like a BERT sequence; otherwise (CLM) the
    stream is cut raw and documents are separated by EOS.
    """
    import numpy as np

    stats = {"tokens": 0}
    parts = list(_packed([tokenizer(texts, add_special_tokens=False)["input_ids"]], tokenizer, block_size, add_cls, stats))
    if not parts:
        raise ValueError(f"corpus has {stats['tokens']} tokens, fewer than one block of {block_size}")
    return np.concatenate(parts), stats["tokens"]


def cache_key(corpus_path: Path, params: TokenizeParams, objective: str, base_model: str | None, ids_only: bool = False) -> str:
    """(data, tokenizer settings, block size, packing): unchanged inputs are never re-tokenized.

    ``ids_only``: the key of the token ids alone (independent of block size and packing).
    """
    import hashlib

    h = hashlib.sha256()
    with open(corpus_path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    settings = params.model_dump(mode="json")
    settings.pop("map_batch_size"), settings.pop("cache_max_gb"), settings.pop("num_proc")  # how it is computed and kept, not what
    if ids_only:
        settings.pop("block_size"), settings.pop("packing")
    h.update(json.dumps([settings, None if ids_only else objective, base_model], sort_keys=True).encode())
    return h.hexdigest()[:20]


class _Texts:
    """Re-iterable texts of an Arrow dataset, read in batches (tokenizer training makes two passes)."""

    def __init__(self, ds, batch: int):
        self.ds, self.batch = ds, batch

    def __iter__(self):
        for b in self.ds.iter(batch_size=self.batch):
            yield from b["text"]


def _write_blocks(rows, block_size: int, out: Path) -> int:
    """Append int32 rows of ``block_size`` to ``out`` (.npy) as they come; returns the row count."""
    import numpy as np

    raw = out.with_suffix(".bin")
    n = 0
    with open(raw, "wb") as fh:
        for chunk in rows:
            if len(chunk):
                fh.write(np.ascontiguousarray(chunk, dtype=np.int32).tobytes())
                n += len(chunk)
    arr = np.lib.format.open_memmap(out, mode="w+", dtype=np.int32, shape=(n, block_size))
    src = np.memmap(raw, dtype=np.int32, mode="r", shape=(n, block_size)) if n else None
    step = max(1, (1 << 24) // max(block_size, 1))
    for i in range(0, n, step):
        arr[i : i + step] = src[i : i + step]
    arr.flush()
    del arr, src
    raw.unlink()
    return n


def _packed(id_batches, tokenizer, block_size: int, add_cls: bool, stats: dict):
    """The stream of documents (separator after each) cut into bodies; same blocks as ``pack_blocks``."""
    import numpy as np

    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    body = block_size - 2 if add_cls else block_size
    carry: list[int] = []
    for batch in id_batches:
        for ids in batch:
            carry.extend(ids)
            carry.append(sep)
            stats["tokens"] += len(ids) + 1
        n = len(carry) // body
        if n:
            arr = np.asarray(carry[: n * body], dtype=np.int32).reshape(n, body)
            carry = carry[n * body :]
            if add_cls:
                arr = np.concatenate([np.full((n, 1), tokenizer.cls_token_id, np.int32), arr, np.full((n, 1), sep, np.int32)], axis=1)
            yield arr


def _line_by_line(id_batches, tokenizer, block_size: int, add_cls: bool, stats: dict):
    """One document per block: [CLS] ids [SEP] (MLM) or ids (CLM), truncated, then padded."""
    import numpy as np

    pad = tokenizer.pad_token_id
    body = block_size - 2 if add_cls else block_size
    for batch in id_batches:
        arr = np.full((len(batch), block_size), pad, dtype=np.int32)
        for i, ids in enumerate(batch):
            ids = ids[:body]
            stats["tokens"] += len(ids)
            row = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id] if add_cls else ids
            arr[i, : len(row)] = row
            stats["used"] += len(row)
        yield arr


def _publish(src: Path, dst: Path) -> None:
    """Copy a finished result into the cache atomically (hard links where the filesystem allows)."""
    import os
    import shutil

    if dst.exists():
        return
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("hf-cache"))
    try:
        tmp.rename(dst)
    except OSError:  # another process published first
        shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    import os
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def tokenize_corpus(corpus_path: Path, params: TokenizeParams, objective: str, base_model: str | None, out_dir: Path,
                    cache_root: Path | None = None) -> TokenizeSummary:
    import os
    import shutil

    import datasets

    from lmops.env import lmops_home

    out_dir.mkdir(parents=True, exist_ok=True)
    cache_root = cache_root or lmops_home() / "cache" / "tokenize"
    cache_root.mkdir(parents=True, exist_ok=True)
    key = cache_key(corpus_path, params, objective, base_model)
    done = out_dir / "tokenize.json"
    if done.exists() and (out_dir / "blocks.npy").exists():
        prev = json.loads(done.read_text())
        if prev.get("cache_key") == key:
            return TokenizeSummary(**{**prev, "cached": True})
    hit = cache_root / key
    if (hit / "tokenize.json").exists():
        prune_cache(cache_root, params.cache_max_gb, keep=[hit])
        for name in ("tokenizer", "blocks.npy", "tokenize.json"):
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if (hit / name).is_dir():
                shutil.copytree(hit / name, target, copy_function=_link_or_copy)
            else:
                _link_or_copy(str(hit / name), str(target))
        prev = json.loads((out_dir / "tokenize.json").read_text())
        # paths in the cached summary point into the cache; this run's copies are in out_dir
        prev.update(tokenizer_dir=str(out_dir / "tokenizer"), blocks_path=str(out_dir / "blocks.npy"))
        return TokenizeSummary(**{**prev, "cached": True})

    # Memory-mapped Arrow copy of the corpus: batches are read from disk, never the whole corpus.
    ds = datasets.Dataset.from_parquet(str(corpus_path), columns=["text"], cache_dir=str(cache_root / "hf"))
    trained = not (base_model and params.reuse_base)
    if trained:
        tokenizer = train_tokenizer(_Texts(ds, params.map_batch_size), params)
    else:
        from lmops.models import load_tokenizer, resolve_model_ref

        tokenizer = load_tokenizer(resolve_model_ref(base_model))
    tok_dir = out_dir / "tokenizer"
    tokenizer.save_pretrained(tok_dir)
    add_cls = objective == "mlm" and tokenizer.cls_token_id is not None

    ids_file = cache_root / f"ids-{cache_key(corpus_path, params, objective, base_model, ids_only=True)}.arrow"
    procs = params.num_proc or max(1, min(os.cpu_count() or 1, len(ds) // 5000))
    # several processes write one file each (<stem>_00000_of_00002.arrow ...), read back in order
    ids_cached = ids_file.exists() or any(cache_root.glob(f"{ids_file.stem}_*_of_{procs:05d}.arrow"))
    ids = ds.map(
        lambda batch: {"input_ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]},
        batched=True, batch_size=params.map_batch_size, remove_columns=["text"], num_proc=procs if procs > 1 else None,
        cache_file_name=str(ids_file), load_from_cache_file=True, new_fingerprint=ids_file.stem, desc="tokenize",
    )
    stats = {"tokens": 0, "used": 0}
    batches = (b["input_ids"] for b in ids.iter(batch_size=params.map_batch_size))
    rows = (_packed if params.packing else _line_by_line)(batches, tokenizer, params.block_size, add_cls, stats)
    n_blocks = _write_blocks(rows, params.block_size, out_dir / "blocks.tmp.npy")
    if n_blocks == 0:
        raise ValueError(f"corpus has {stats['tokens']} tokens, fewer than one block of {params.block_size}")
    (out_dir / "blocks.tmp.npy").replace(out_dir / "blocks.npy")
    padding = 0.0 if params.packing else round(1 - stats["used"] / (n_blocks * params.block_size), 4)
    summary = TokenizeSummary(
        tokenizer_dir=str(tok_dir), blocks_path=str(out_dir / "blocks.npy"), vocab_size=len(tokenizer),
        documents=len(ds), tokens=stats["tokens"], blocks=n_blocks, block_size=params.block_size, trained=trained, cache_key=key,
        packing=params.packing, padding_fraction=padding, ids_cached=ids_cached,
    )
    (out_dir / "tokenize.json").write_text(json.dumps(asdict(summary), indent=2))
    _publish(out_dir, hit)
    corpus_copy = [Path(f["filename"]) for f in ds.cache_files]
    prune_cache(cache_root, params.cache_max_gb, keep=[hit, ids_file, *(Path(f["filename"]) for f in ids.cache_files), *corpus_copy])
    return summary


def _cache_entries(root: Path) -> list[Path]:
    """The units the cache is pruned by: result folders, token-id files, Arrow copies of corpora."""
    entries = [p for p in root.iterdir() if p.is_dir() and p.name != "hf" and ".tmp" not in p.name]
    entries += list(root.glob("ids-*.arrow"))
    entries += [p for p in (root / "hf" / "parquet").glob("*") if p.is_dir()] if (root / "hf" / "parquet").exists() else []
    return entries


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prune_cache(root: Path, max_gb: float | None, keep: list[Path] = ()) -> list[Path]:
    """Remove least recently used cache entries until the cache is within ``max_gb``; returns what went.

    ``keep`` (this run's entries, or files inside them) is marked used now and never removed."""
    import os
    import shutil
    import time

    now = time.time()
    kept: set[Path] = set()
    entries = _cache_entries(root)
    for k in keep:
        for e in entries:
            if k == e or e in k.parents:
                kept.add(e)
                os.utime(e, (now, now))  # mtime is the "last used" clock
    if max_gb is None:
        return []
    sizes = {e: _size(e) for e in entries}
    total, budget = sum(sizes.values()), max_gb * 1e9
    removed = []
    for e in sorted(entries, key=lambda e: e.stat().st_mtime):
        if total <= budget:
            break
        if e in kept:
            continue
        if e.is_dir():
            shutil.rmtree(e, ignore_errors=True)
        else:
            e.unlink(missing_ok=True)
        if e.parent.name == "parquet":  # datasets' lock file for that Arrow copy
            for lock in (root / "hf").glob(f"*{e.name}*.lock"):
                lock.unlink(missing_ok=True)
        total -= sizes[e]
        removed.append(e)
    return removed
