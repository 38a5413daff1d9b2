"""Pretraining model setup: a model from params (or a checkpoint to continue), dropout, precision,
attention kernel, and the FLOP count behind MFU."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

from lmops.config import PretrainParams
from lmops.tasks.lm import mlm_parts


# Dense bf16 peak FLOP/s per device, for MFU (vendor datasheets, without sparsity).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def set_dropout(config, rate: float | None):
    """Set every dropout rate of a Hugging Face config (BERT ``*_dropout_prob``, GPT-2 ``*_pdrop``, …)."""
    if rate is None:
        return config
    for key, value in config.to_dict().items():
        if isinstance(value, float) and (key.endswith("dropout") or key.endswith("dropout_prob") or key.endswith("pdrop")):
            setattr(config, key, rate)
    return config


def build_model(params: PretrainParams, tokenizer, block_size: int, token_counts: Callable[[int], Any] | None = None):
    """A fresh model from the sizes in params, or a checkpoint to continue from. ``token_counts(vocab_size)``: the
    training tokens' counts per id, asked for only when the checkpoint has no head to continue (``pretrain.head_init``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    if params.base_model:
        from lmops.models import resolve_model_ref

        ref = resolve_model_ref(params.base_model)
        auto = AutoModelForMaskedLM if params.objective == "mlm" else AutoModelForCausalLM
        cfg = set_dropout(AutoConfig.from_pretrained(ref, trust_remote_code=False), params.dropout)
        model, info = auto.from_pretrained(ref, config=cfg, use_safetensors=True, trust_remote_code=False,
                                           attn_implementation=params.attn_implementation, output_loading_info=True)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        if params.head_init == "prior" and token_counts is not None and headless(model, info["missing_keys"]):
            init_head_bias(model, token_counts)
        return named_loss(model, params.objective)
    m = params.pad_vocab_to_multiple
    vocab_size = -(-len(tokenizer) // m) * m
    if params.objective == "mlm":
        cfg = BertConfig(
            vocab_size=vocab_size, hidden_size=params.hidden_size, num_hidden_layers=params.num_layers,
            num_attention_heads=params.num_heads, intermediate_size=params.intermediate_size,
            max_position_embeddings=max(512, block_size), pad_token_id=tokenizer.pad_token_id,
        )
        set_dropout(cfg, params.dropout)
        cfg._attn_implementation = params.attn_implementation
        return BertForMaskedLM(cfg)
    cfg = GPT2Config(
        vocab_size=vocab_size, n_embd=params.hidden_size, n_layer=params.num_layers, n_head=params.num_heads,
        n_inner=params.intermediate_size, n_positions=max(1024, block_size),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    set_dropout(cfg, params.dropout)
    cfg._attn_implementation = params.attn_implementation
    return named_loss(GPT2LMHeadModel(cfg), params.objective)


def headless(model, missing_keys) -> bool:
    """Whether the checkpoint lacked the output head: weights outside the encoder were initialised fresh."""
    prefix = f"{model.base_model_prefix}."
    return any(not k.startswith(prefix) for k in missing_keys)


def init_head_bias(model, token_counts: Callable[[int], Any]) -> None:
    """The output layer's bias set to the log unigram frequency of the training tokens (add-half smoothing). A
    fresh head's logits are otherwise noise around zero, a loss above the uniform guess's, and its first gradients
    into the pretrained encoder are that noise. An output layer without a bias is left as it is."""
    import numpy as np
    import torch

    out = model.get_output_embeddings()
    if out is None or getattr(out, "bias", None) is None:
        return
    counts = np.asarray(token_counts(out.bias.shape[0]), dtype=np.float64)[: out.bias.shape[0]] + 0.5
    with torch.no_grad():
        out.bias.copy_(torch.from_numpy(np.log(counts / counts.sum())).to(out.bias.dtype))


def named_loss(model, objective: str):
    # Without a loss_type, HF logs "loss_type=None ... unrecognized" on every forward, which also breaks
    # the torch.compile graph in two before the loss.
    if objective == "clm" and getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"
    return model


def flops_per_token(model, block_size: int, head_fraction: float = 1.0) -> float:
    """Training FLOPs per token: 6·N (forward+backward matmuls) + attention scores (PaLM appendix B).

    N counts every weight that takes part in a matmul: not the position/type embeddings (lookups), but
    the word embeddings, which are also the tied output layer. ``head_fraction`` is the share of tokens
    the vocabulary head runs on (0.15 with the sparse MLM head), so MFU counts only work that is done.
    """
    cfg = model.config
    lookup = ("position_embeddings", "token_type_embeddings", ".wpe.")
    named = dict(model.named_parameters())
    n = sum(p.numel() for name, p in named.items() if not any(k in name for k in lookup))
    out = model.get_output_embeddings()
    head_params = 0
    parts = mlm_parts(model)
    if parts is not None:
        seen = {id(p) for p in parts[1].parameters()}
        head_params = sum(p.numel() for p in parts[1].parameters())
        if out is not None and id(out.weight) not in seen:
            head_params += out.weight.numel()
    elif out is not None:
        head_params = out.weight.numel()
    n -= (1.0 - head_fraction) * head_params
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    return 6 * n + 12 * layers * hidden * block_size


def device_peak_flops(params: PretrainParams, device) -> float | None:
    if params.peak_flops:
        return params.peak_flops
    if device.type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def precision_of(params: PretrainParams, device) -> str:
    import torch

    if params.precision != "auto":
        return params.precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def sdpa_context(backend: str):
    """A context that forces one SDPA kernel (``pretrain.sdpa_backend``); ``auto`` leaves PyTorch's choice."""
    if backend == "auto":
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
              "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[backend]
    return lambda: sdpa_kernel([chosen])
