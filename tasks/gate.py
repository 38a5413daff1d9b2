"""Gate: decide whether a candidate model may replace the champion. Pure: no I/O, table-tested.

Both models are scored *now* on the same frozen test split by the caller; this function only
compares numbers and says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lmops.config import GateParams


@dataclass
class GateDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    candidate: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] | None = None
    champion_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        verdict = "✅ **promote**" if self.promote else "⛔ **do not promote**"
        lines = [f"# Gate decision: {verdict}", ""]
        lines += [f"- {r}" for r in self.reasons]
        lines += ["", "| metric | candidate | champion |", "|---|---:|---:|"]
        for key, value in self.candidate.items():
            champ = (self.champion or {}).get(key)
            lines.append(f"| {key} | {value:.4f} | {'' if champ is None else f'{champ:.4f}'} |")
        return "\n".join(lines) + "\n"


def decide(candidate: dict[str, float], champion: dict[str, float] | None, params: GateParams, champion_version: str | None = None) -> GateDecision:
    reasons: list[str] = []
    ok = True
    for metric, floor in (("accuracy", params.min_accuracy), ("macro_f1", params.min_macro_f1)):
        value = candidate[metric]
        if value < floor:
            ok = False
            reasons.append(f"{metric} {value:.4f} is below the threshold {floor:.4f} (gate.min_{metric})")
        else:
            reasons.append(f"{metric} {value:.4f} meets the threshold {floor:.4f}")
    key = params.primary_metric
    if champion is None:
        reasons.append("no current champion: the first model that passes the thresholds becomes champion")
    else:
        needed = champion[key] + params.margin
        # "at least the margin": exactly champion + margin passes, whatever the float rounding of the sum
        if candidate[key] >= needed - 1e-9:
            reasons.append(f"{key} {candidate[key]:.4f} >= champion v{champion_version} {champion[key]:.4f} + margin {params.margin}")
        else:
            ok = False
            reasons.append(f"{key} {candidate[key]:.4f} < champion v{champion_version} {champion[key]:.4f} + margin {params.margin} (same test split, scored now)")
    return GateDecision(promote=ok, reasons=reasons, candidate=dict(candidate), champion=dict(champion) if champion else None, champion_version=champion_version)
