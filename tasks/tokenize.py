"""Tokenize: train a tokenizer on the domain corpus (or reuse the base model's), pack into blocks.

Outputs: ``tokenizer/`` (Hugging Face format), ``blocks.npy`` (int32, [n_blocks, block_size]) and
``tokenize.json``. Packing concatenates documents with a separator so no token is wasted on padding.
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


def train_tokenizer(texts: Iterable[str], params: TokenizeParams):
    """A WordPiece (BERT) or byte-level BPE (GPT-2) tokenizer trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if params.kind == "wordpiece":
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


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None:  # GPT-2 family ships without one
        tok.pad_token = tok.eos_token
    return tok


def pack_blocks(tokenizer, texts: list[str], block_size: int, add_cls: bool):
    """Concatenate documents (separator between them) and cut into equal blocks.

    With ``add_cls`` (MLM) each block is ``[CLS] … [SEP]`` like a BERT sequence; otherwise (CLM) the
    stream is cut raw and documents are separated by EOS.
    """
    import numpy as np

    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for ids in enc:
        stream.extend(ids)
        stream.append(sep)
    body = block_size - 2 if add_cls else block_size
    n = len(stream) // body
    if n == 0:
        raise ValueError(f"corpus has {len(stream)} tokens, fewer than one block of {block_size}")
    arr = np.asarray(stream[: n * body], dtype=np.int32).reshape(n, body)
    if add_cls:
        cls = np.full((n, 1), tokenizer.cls_token_id, dtype=np.int32)
        end = np.full((n, 1), sep, dtype=np.int32)
        arr = np.concatenate([cls, arr, end], axis=1)
    return arr, len(stream)


def cache_key(corpus_path: Path, params: TokenizeParams, objective: str, base_model: str | None) -> str:
    """(data, tokenizer settings, block size): unchanged inputs are never re-tokenized."""
    import hashlib

    h = hashlib.sha256()
    with open(corpus_path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    h.update(json.dumps([params.model_dump(mode="json"), objective, base_model], sort_keys=True).encode())
    return h.hexdigest()[:20]


def tokenize_corpus(corpus_path: Path, params: TokenizeParams, objective: str, base_model: str | None, out_dir: Path) -> TokenizeSummary:
    import numpy as np
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(corpus_path, params, objective, base_model)
    done = out_dir / "tokenize.json"
    if done.exists() and (out_dir / "blocks.npy").exists():
        prev = json.loads(done.read_text())
        if prev.get("cache_key") == key:
            return TokenizeSummary(**{**prev, "cached": True})
    texts = pd.read_parquet(corpus_path)["text"].tolist()
    trained = not (base_model and params.reuse_base)
    if trained:
        tokenizer = train_tokenizer(texts, params)
    else:
        from lmops.models import resolve_model_ref

        tokenizer = load_tokenizer(resolve_model_ref(base_model))
    tok_dir = out_dir / "tokenizer"
    tokenizer.save_pretrained(tok_dir)
    add_cls = objective == "mlm" and tokenizer.cls_token_id is not None
    blocks, n_tokens = pack_blocks(tokenizer, texts, params.block_size, add_cls)
    np.save(out_dir / "blocks.tmp.npy", blocks)
    (out_dir / "blocks.tmp.npy").replace(out_dir / "blocks.npy")
    summary = TokenizeSummary(
        tokenizer_dir=str(tok_dir), blocks_path=str(out_dir / "blocks.npy"), vocab_size=len(tokenizer),
        documents=len(texts), tokens=n_tokens, blocks=int(blocks.shape[0]), block_size=params.block_size, trained=trained, cache_key=key,
    )
    (out_dir / "tokenize.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary
