"""Spikes: an entity's mean sentiment in one time bucket far from its own recent past.

For bucket t with at least ``min_volume`` documents, the baseline is the earlier buckets within ``window`` buckets
that also have ``min_volume`` (at least ``min_history`` of them). With μ the volume-weighted baseline mean, σ² the
documents' variance over the baseline and τ² the part of the baseline bucket means' variance that sampling noise
does not explain, the bucket's noise is √(σ²/n_t + τ²) (floored at ``min_std``) and z = (m_t − μ) / noise: a
bucket of few documents needs a bigger move to alert than a busy one, and an entity whose daily mean swings on
its own needs a bigger move than a steady one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from lmops.config import SpikeParams


@dataclass
class Bucket:
    start: float  # Unix seconds
    volume: int
    mean: float  # mean document score in [-1, 1]
    mean_sq: float  # mean squared document score (for the documents' variance)
    neg_share: float = 0.0
    pos_share: float = 0.0
    versions: str = ""  # model versions that scored these documents


@dataclass
class Spike:
    entity: str
    bucket: float
    z: float
    mean: float
    baseline: float
    volume: int
    direction: str  # "negative" (sentiment fell) or "positive"
    versions: str

    def to_dict(self) -> dict:
        return asdict(self)


def zscore(current: Bucket, history: list[Bucket], min_std: float) -> tuple[float, float]:
    """(z, baseline mean) of ``current`` against ``history``."""
    n = sum(b.volume for b in history)
    mu = sum(b.volume * b.mean for b in history) / n
    var_doc = max(0.0, sum(b.volume * b.mean_sq for b in history) / n - mu * mu)
    means = [b.mean for b in history]
    m_bar = sum(means) / len(means)
    var_means = sum((m - m_bar) ** 2 for m in means) / (len(means) - 1) if len(means) > 1 else 0.0
    tau2 = max(0.0, var_means - sum(var_doc / b.volume for b in history) / len(history))
    noise = max(min_std, math.sqrt(var_doc / current.volume + tau2))
    return (current.mean - mu) / noise, mu


def detect(entity: str, buckets: list[Bucket], p: SpikeParams, bucket_s: int) -> list[Spike]:
    """Every bucket of ``entity`` (sorted or not) whose |z| reaches ``p.z``."""
    series = sorted(buckets, key=lambda b: b.start)
    spikes = []
    for i, b in enumerate(series):
        if b.volume < p.min_volume:
            continue
        history = [h for h in series[:i] if h.volume >= p.min_volume and b.start - h.start <= p.window * bucket_s]
        if len(history) < p.min_history:
            continue
        z, mu = zscore(b, history, p.min_std)
        if abs(z) >= p.z:
            spikes.append(Spike(entity, b.start, round(z, 3), round(b.mean, 4), round(mu, 4), b.volume,
                                "negative" if z < 0 else "positive", b.versions))
    return spikes


def movers(series: dict[str, list[Bucket]], p: SpikeParams, bucket_s: int, top: int = 10) -> list[dict]:
    """Entities whose latest bucket (with min_volume) moved most against their baseline, by |z|."""
    out = []
    for entity, buckets in series.items():
        s = sorted((b for b in buckets if b.volume >= p.min_volume), key=lambda b: b.start)
        if len(s) < 2:
            continue
        last = s[-1]
        history = [h for h in s[:-1] if last.start - h.start <= p.window * bucket_s]
        if not history:
            continue
        z, mu = zscore(last, history, p.min_std)
        out.append({"entity": entity, "bucket": last.start, "mean": round(last.mean, 4), "baseline": round(mu, 4),
                    "change": round(last.mean - mu, 4), "z": round(z, 2), "volume": last.volume, "versions": last.versions})
    return sorted(out, key=lambda r: -abs(r["z"]))[:top]
