"""Gate: decide whether a candidate model may replace the champion. Pure: no I/O, table-tested.

Both models are scored *now* on the same frozen test split, and on every named evaluation set
(``gate.sets``, e.g. out-of-source canaries), by the caller; this function only compares numbers and
says why, set by set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lmops.config import GateParams


@dataclass
class SetScores:
    """One named evaluation set, scored for the gate."""

    n: int
    candidate: dict[str, float]
    champion: dict[str, float] | None = None
    ci95: dict[str, list[float]] | None = None  # the candidate's bootstrap interval per metric
    diff: dict[str, Any] | None = None  # paired bootstrap of (candidate − champion), per metric
    left_out: int = 0  # rows also in the training or validation data, not scored


@dataclass
class GateDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    candidate: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] | None = None
    champion_version: str | None = None
    primary_metric: str = "macro_f1"
    test: SetScores | None = None  # the test split's intervals (the headline numbers are candidate/champion)
    sets: dict[str, SetScores] = field(default_factory=dict)
    sources: dict[str, SetScores] = field(default_factory=dict)  # the test split's rows of each source, when it holds several
    # the candidate on the test rows the champion was scored on, where it had trained on some (they are left out)
    paired: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        verdict = "✅ **promote**" if self.promote else "⛔ **do not promote**"
        lines = [f"# Gate decision: {verdict}", ""]
        lines += [f"- {r}" for r in self.reasons]
        if self.paired is None:
            lines += ["", "| metric | candidate | champion |", "|---|---:|---:|"]
        else:
            lines += ["", "| metric | candidate, test split | candidate, rows the champion did not train on | champion, the same rows |",
                      "|---|---:|---:|---:|"]
        for key, value in self.candidate.items():
            champ = (self.champion or {}).get(key)
            both = "" if self.paired is None else f" {self.paired[key]:.4f} |"
            lines.append(f"| {key} | {value:.4f} |{both} {'' if champ is None else f'{champ:.4f}'} |")
        key = self.primary_metric
        rows = (([("test split", self.test)] if self.test else []) + [(f"test split · {name}", s) for name, s in self.sources.items()]
                + list(self.sets.items()))
        if rows:
            lines += ["", f"{key} on every evaluation set (95% bootstrap intervals; the difference is paired, candidate − champion):", "",
                      "| set | n | candidate | champion | difference |", "|---|---:|---:|---:|---:|"]
            for name, s in rows:
                ci = (s.ci95 or {}).get(key)
                d = (s.diff or {}).get(key)
                champ = (s.champion or {}).get(key)
                n = f"{s.n} ({s.left_out} left out: in training data)" if s.left_out else str(s.n)
                cand = f"{s.candidate[key]:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
                diff = f"{d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]" if d else ""
                lines.append(f"| {name} | {n} | {cand} | {'' if champ is None else f'{champ:.4f}'} | {diff} |")
        return "\n".join(lines) + "\n"


def decide(candidate: dict[str, float], champion: dict[str, float] | None, params: GateParams, champion_version: str | None = None,
           test: SetScores | None = None, sets: dict[str, SetScores] | None = None, sources: dict[str, SetScores] | None = None,
           paired: dict[str, float] | None = None, notes: list[str] = ()) -> GateDecision:
    """``test``: the test split's intervals and paired difference (needed by ``gate.require_significant``);
    ``sets``: every ``gate.sets`` entry, scored; ``sources``: the test split per source (``gate.source_max_drop``).
    ``paired``: the candidate on the rows the champion was scored on, where those are fewer than the test split's
    (the rows the champion trained on left out; the floors still read ``candidate``); ``notes``: said first."""
    reasons: list[str] = list(notes)
    versus = paired or candidate
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
        rows = "the test rows it did not train on" if paired is not None else "same test split"
        # "at least the margin": exactly champion + margin passes, whatever the float rounding of the sum
        if versus[key] >= needed - 1e-9:
            reasons.append(f"{key} {versus[key]:.4f} >= champion v{champion_version} {champion[key]:.4f} + margin {params.margin}"
                           + (f" ({rows})" if paired is not None else ""))
        else:
            ok = False
            reasons.append(f"{key} {versus[key]:.4f} < champion v{champion_version} {champion[key]:.4f} + margin {params.margin} ({rows}, scored now)")
    if champion is not None and params.require_significant:
        d = ((test.diff if test else None) or {}).get(key)
        if d is None:
            ok = False
            reasons.append(f"no paired bootstrap of {key} against the champion, which gate.require_significant needs")
        elif d["ci95"][0] > 0:
            reasons.append(f"{key} difference to champion v{champion_version} {d['diff']:+.4f}, 95% interval [{d['ci95'][0]:+.4f}, "
                           f"{d['ci95'][1]:+.4f}]: above noise")
        else:
            ok = False
            reasons.append(f"{key} difference to champion v{champion_version} {d['diff']:+.4f}, 95% interval [{d['ci95'][0]:+.4f}, "
                           f"{d['ci95'][1]:+.4f}], cannot be told from noise on this test split (gate.require_significant)")
    for name, spec in params.sets.items():
        s = (sets or {}).get(name)
        if s is None:
            ok = False
            reasons.append(f"set {name}: not scored (gate.sets.{name})")
            continue
        v = s.candidate[key]
        if v < spec.min_score - 1e-9:
            ok = False
            reasons.append(f"set {name}: {key} {v:.4f} is below its floor {spec.min_score:.4f} (gate.sets.{name}.min_score)")
        if s.champion is None or spec.max_drop is None:
            if v >= spec.min_score - 1e-9:
                reasons.append(f"set {name}: {key} {v:.4f} meets its floor {spec.min_score:.4f}")
            continue
        c = s.champion[key]
        if v >= c - spec.max_drop - 1e-9:
            reasons.append(f"set {name}: {key} {v:.4f} vs champion v{champion_version} {c:.4f}: within the allowed drop {spec.max_drop}")
        else:
            ok = False
            reasons.append(f"set {name}: {key} {v:.4f} fell below champion v{champion_version} {c:.4f} by more than {spec.max_drop} "
                           f"(gate.sets.{name}.max_drop)")
    if params.source_max_drop is not None:
        for name, s in (sources or {}).items():
            if s.champion is None:
                continue  # a source the champion's test split did not hold: nothing to regress from
            v, c = s.candidate[key], s.champion[key]
            if v >= c - params.source_max_drop - 1e-9:
                reasons.append(f"test split, source {name}: {key} {v:.4f} vs champion v{champion_version} {c:.4f}: within the allowed drop "
                               f"{params.source_max_drop}")
            else:
                ok = False
                reasons.append(f"test split, source {name}: {key} {v:.4f} fell below champion v{champion_version} {c:.4f} by more than "
                               f"{params.source_max_drop} (gate.source_max_drop)")
    return GateDecision(promote=ok, reasons=reasons, candidate=dict(candidate), champion=dict(champion) if champion else None,
                        champion_version=champion_version, primary_metric=key, test=test, sets=dict(sets or {}), sources=dict(sources or {}),
                        paired=dict(paired) if paired is not None else None)
