"""Weight averaging while training (``finetune.averaging``): an exponential moving average (EMA) of the trainable
weights, kept beside them and swapped in to be scored or saved.

Why: the weights at the end of a step sit wherever the last mini-batches pushed them; an average over the last
part of the trajectory sits nearer the middle of the flat region they move in, which generalises better out of
distribution (Izmailov et al. 2018, SWA; Cha et al. 2021, SWAD) and moves less from one training run to the next.
It costs no inference: the averaged model has the base's size.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


def ema_decay(horizon_epochs: float, steps_per_epoch: int) -> float:
    """The decay whose average reaches back ``horizon_epochs`` epochs (1 / (1 - decay) steps)."""
    return 1.0 - 1.0 / max(1.0, horizon_epochs * steps_per_epoch)


class WeightAverage:
    """An EMA of ``params`` (the trainable tensors): ``update()`` after each optimizer step, ``applied()`` to put the
    average in the model for a while. Until ``1 / (1 - decay)`` steps have been taken it is the plain mean of the
    steps so far (decay ``t / (t + 1)``), so the weights it started from (the random head's) weigh no more than any
    step; after that, an EMA with ``decay``. (timm's ``(1 + t) / (10 + t)`` warm-up would cap the reach at about
    t / 9 steps for the first 9 / (1 - decay) steps: all of a few-epoch fine-tuning, whatever the horizon asked.)"""

    def __init__(self, params: list, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"an EMA decay must be in [0, 1), got {decay}")
        self.params = list(params)
        self._live = [p.detach() for p in self.params]  # views of the same storage: made once, not every step
        self.decay = decay
        self.updates = 0
        self.shadow = [p.detach().clone() for p in self.params]

    def current_decay(self) -> float:
        return min(self.decay, self.updates / (self.updates + 1))

    def update(self) -> None:
        import torch

        d = self.current_decay()
        self.updates += 1
        with torch.no_grad():
            # shadow += (1 - d) · (param - shadow), over all tensors in one fused call
            torch._foreach_lerp_(self.shadow, self._live, 1.0 - d)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model inside the block; the trained ones back after it (however it ends)."""
        import torch

        with torch.no_grad():
            trained = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(self.params, trained):
                    p.copy_(t)
