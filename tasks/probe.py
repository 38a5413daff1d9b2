"""A linear probe before fine-tuning (``finetune.linear_probe``): LP-FT (Kumar et al., "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution", ICLR 2022).

Fine-tuning from a random head sends large gradients through the whole encoder while the head is still wrong, and
those first steps distort the features that carried the base's knowledge beyond the training source. A head fitted
first on the frozen features starts the fine-tuning near a solution, so the encoder moves less. The features are
computed once (the encoder in eval mode, the head's input captured); the head is a multinomial logistic regression
fitted by L-BFGS with the training loss's class weights, its L2 strength chosen on the validation split."""

from __future__ import annotations

from typing import Any

STRENGTHS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def head_inputs(model, head, tokenizer, kind, inputs: list, max_length: int, reading, batch_size: int = 128):
    """What ``head`` (the model's linear head) reads for each input (an [n, hidden] tensor), as the model computes it
    in eval mode."""
    import torch

    captured: list = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(inputs), batch_size):
                model(**kind.encode(tokenizer, inputs[i : i + batch_size], max_length, reading))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).float()


def fit_head(x, y: list, x_val, y_val: list, n_labels: int, weight=None) -> dict[str, Any]:
    """The logistic regression of each strength in STRENGTHS; the one with the best validation macro-F1 (ties: the
    stronger penalty) as ``{"weight", "bias", "strength", "val_macro_f1"}``."""
    import torch

    from lmops.metrics import macro_f1

    y_t = torch.as_tensor(y, dtype=torch.long)
    best: dict[str, Any] | None = None
    for strength in sorted(STRENGTHS, reverse=True):
        w = torch.zeros(n_labels, x.shape[1], requires_grad=True)  # zeros: no draw from torch's random stream
        b = torch.zeros(n_labels, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w.T + b, y_t, weight=weight) + strength * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            f1 = macro_f1(list(y_val), (x_val @ w.T + b).argmax(-1).tolist(), n_labels)
        if best is None or f1 > best["val_macro_f1"]:
            best = {"weight": w.detach(), "bias": b.detach(), "strength": strength, "val_macro_f1": f1}
    return best


def probe(model, tokenizer, kind, texts: list, y: list, val_inputs: list, y_val: list, n_labels: int, max_length: int,
          reading, weight=None) -> dict[str, Any]:
    """Fit the model's linear head on its frozen features and set it; returns the strength and validation macro-F1."""
    import torch

    from lmops.tasks.pooling import linear_head

    head = linear_head(model, "finetune.linear_probe", "finetune.linear_probe: false")
    x = head_inputs(model, head, tokenizer, kind, list(texts), max_length, reading)
    x_val = head_inputs(model, head, tokenizer, kind, list(val_inputs), max_length, reading)
    best = fit_head(x, y, x_val, y_val, n_labels, weight)
    with torch.no_grad():
        head.weight.copy_(best["weight"])
        head.bias.copy_(best["bias"])
    return {"strength": best["strength"], "val_macro_f1": round(best["val_macro_f1"], 4)}
