"""Language-model targets and loss: BERT masking (whole-word too), causal labels, the sparse MLM head,
and the one held-out loss loop that pretraining and ``lmops evaluate`` share (so both count the same
predicted tokens)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass


def continuation_table(tokenizer):
    """Bool tensor over the vocab: True where a token continues the previous word.

    WordPiece marks continuations with ``##``; byte-level BPE (GPT-2/RoBERTa) and SentencePiece mark
    word *starts* (``Ġ`` / ``▁``), so there a token without the marker continues a word.
    """
    import torch

    vocab = tokenizer.get_vocab()
    table = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    tokens = list(vocab)
    if any(t.startswith("##") for t in tokens):
        rule = lambda t: t.startswith("##")  # noqa: E731
    else:
        marker = "Ġ" if any(t.startswith("Ġ") for t in tokens) else "▁"
        rule = lambda t: not t.startswith(marker)  # noqa: E731
    specials = set(tokenizer.all_special_tokens)
    for tok, idx in vocab.items():
        table[idx] = rule(tok) and tok not in specials
    return table


def mask_tokens(input_ids, tokenizer, probability: float, generator, continuation=None):
    """BERT masking: choose ``probability`` of non-special tokens (or of whole words when
    ``continuation`` is given); of those 80% [MASK], 10% random, 10% kept.

    Returns (inputs, labels) with labels = -100 where no prediction is asked for.
    """
    import torch

    labels = input_ids.clone()
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for tid in set(tokenizer.all_special_ids):
        special |= input_ids == tid
    draw = torch.rand(input_ids.shape, generator=generator)
    if continuation is not None:
        # Every token takes the draw of the first token of its word, so a word is chosen as a whole.
        cont = continuation[input_ids.clamp(max=len(continuation) - 1)] & ~special
        pos = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        start_pos = torch.where(cont, torch.zeros_like(pos), pos).cummax(dim=1).values
        draw = draw.gather(1, start_pos)
    chosen = (draw < probability) & ~special
    labels[~chosen] = -100
    inputs = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & chosen
    inputs[to_mask] = tokenizer.mask_token_id
    to_random = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool() & chosen & ~to_mask
    inputs[to_random] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[to_random]
    return inputs, labels


def lm_batch(blocks, tokenizer, objective: str, mlm_probability: float, generator, continuation=None, padded: bool = False):
    """Model inputs for a batch of blocks; ``padded`` (line-by-line blocks) adds an attention mask."""
    import numpy as np
    import torch

    ids = torch.as_tensor(np.asarray(blocks), dtype=torch.long)
    if objective == "mlm":
        inputs, labels = mask_tokens(ids, tokenizer, mlm_probability, generator, continuation)
        batch = {"input_ids": inputs, "labels": labels}
    else:
        batch = {"input_ids": ids, "labels": ids.clone()}
    if padded:
        pad = ids == tokenizer.pad_token_id
        batch["attention_mask"] = (~pad).long()
        batch["labels"][pad] = -100
    return batch


def mlm_parts(model):
    """(encoder, vocabulary head) of a Hugging Face masked LM (BERT: .bert/.cls, RoBERTa: .roberta/.lm_head), or None."""
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    return (encoder, head) if encoder is not None and head is not None else None


def sparse_targets(labels, multiple: int = 64):
    """On the host: (flat positions of the labelled tokens, their labels), padded to a multiple of ``multiple``
    with position 0 / label -100. Computed where the masks are drawn, so the device never has to tell the
    host how many tokens are masked (a boolean index would: a sync and a torch.compile graph break per step)."""
    import torch

    flat = labels.reshape(-1)
    pos = (flat != -100).nonzero().squeeze(1)
    n = -(-max(len(pos), 1) // multiple) * multiple
    positions = torch.zeros(n, dtype=torch.long)
    targets = torch.full((n,), -100, dtype=torch.long)
    positions[: len(pos)] = pos
    targets[: len(pos)] = flat[pos]
    return positions, targets


def sparse_mlm(model):
    """Wrap a masked LM so the vocabulary head runs only on masked positions.

    The loss is the same as the model's own (mean cross-entropy over labelled positions); the head's
    matmul over the vocabulary (a fifth of BERT-base's FLOPs, plus a [tokens × vocab] fp32 tensor) is
    done for ~15% of the tokens. Inputs: ``input_ids`` and :func:`sparse_targets` of the labels.
    Returns None for architectures it does not know.
    """
    import torch

    if mlm_parts(model) is None:
        return None

    class SparseMLM(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, mlm_positions, mlm_targets, attention_mask=None):
            encoder, head = mlm_parts(self.inner)
            # packed blocks have no padding, so no mask (and SDPA keeps its fastest kernels)
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = head(hidden.flatten(0, 1).index_select(0, mlm_positions))
            # sum / count: padding rows (label -100) add nothing, and a batch without masks gives 0, not NaN
            loss = torch.nn.functional.cross_entropy(logits.float(), mlm_targets, ignore_index=-100, reduction="sum")
            return _Out(loss / (mlm_targets != -100).sum().clamp(min=1))

    return SparseMLM(model)


@dataclass
class _Out:
    loss: object


def predicted_tokens(labels, objective: str) -> int:
    """Tokens a batch's loss is the mean over: labelled positions; causal LMs shift inside the model, so
    each row predicts from its second position on."""
    return int((labels[:, 1:] != -100).sum()) if objective == "clm" else int((labels != -100).sum())


def lm_loss_parts(model, blocks, tokenizer, objective: str, mlm_probability: float, batch_size: int, seed: int, device=None,
                  autocast=None, padded: bool = False) -> tuple[list[float], list[int]]:
    """Per batch: (summed loss, predicted tokens) over held-out blocks. MLM masks with a fixed seed, so every
    evaluation (and every model compared) sees the same masks."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    was_training = model.training
    model.eval()
    sums, counts = [], []
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            batch = lm_batch(blocks[i : i + batch_size], tokenizer, objective, mlm_probability, gen, padded=padded)
            n = predicted_tokens(batch["labels"], objective)
            if n == 0:
                continue
            if device is not None:
                batch = {k: v.to(device) for k, v in batch.items()}
            with autocast() if autocast else contextlib.nullcontext():
                sums.append(float(model(**batch).loss) * n)
            counts.append(n)
    model.train(was_training)
    return sums, counts


def evaluate_lm(model, blocks, tokenizer, objective: str, mlm_probability: float, batch_size: int, seed: int, device=None, autocast=None,
                padded: bool = False) -> float:
    """Mean held-out loss per predicted token."""
    sums, counts = lm_loss_parts(model, blocks, tokenizer, objective, mlm_probability, batch_size, seed, device, autocast, padded)
    return sum(sums) / max(sum(counts), 1)
