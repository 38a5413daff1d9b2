"""A model soup (Wortsman et al., 2022): fine-tuned models that started from the same weights, averaged weight by
weight into one model of the base's size. So the monitor pays for one model.

Why it works only from one start: runs of several seeds that share their starting weights (``finetune.init_seed``)
end in one basin of the loss, and the point between them scores like their ensemble. Models whose heads were drawn
apart do not, so their average is not a model. Session 21 measured it: with the heads drawn apart, the soup kept
+0.3 of the ensemble's +1.0 out of source; with one start (session 24) it kept all of it (BENCHMARKS.md).
Fine-tuning saves a digest of the weights it starts from (``lmops_start`` in the config), and a soup of models
that recorded different starts is refused.

``uniform`` averages every member. ``greedy`` takes members in order of their validation score, and keeps each
one only if the soup's validation score does not drop with it. Outputs ``model/``, a plain Hugging Face model
folder like finetune's, calibrated on validation, with the members' ``seen_texts``; ``soup.json``; and
``scores.png``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lmops.config import FinetuneParams
from lmops.errors import UserError

if TYPE_CHECKING:
    from lmops.tasks.finetune import FinetuneSummary

WEIGHTS = "model.safetensors"
# config keys that may differ between members of one soup: where and by which transformers they were saved
_INCIDENTAL = ("_name_or_path", "transformers_version")


@dataclass
class SoupSummary:
    model_dir: str
    members: list[str]
    used: list[str]  # the members in the soup (greedy leaves out those that lowered its validation score)
    method: str
    member_val: list[float]  # each member's validation score (selection metric, raw logits), in ``members`` order
    val_select: float  # the soup's
    val_macro_f1: float
    start: str | None  # the digest of the weights the members started from; None when none recorded one
    seconds: float
    temperature: float | None = None
    val_ece_raw: float | None = None
    val_ece: float | None = None
    greedy: list[dict] = field(default_factory=list)  # greedy: each member tried, the soup's score with it, kept or not
    plot: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_candidate(self, first: "FinetuneSummary", trained: list["FinetuneSummary"] = ()) -> "FinetuneSummary":
        """The soup as the pipeline's fine-tuned model (what evaluate, gate and register read); ``first`` is the
        project.seed member, ``trained`` every member this run fine-tuned (their time is the soup's cost)."""
        from lmops.tasks.finetune import FinetuneSummary

        return FinetuneSummary(
            model_dir=self.model_dir, adapter_dir=None, method=f"{first.method}+soup", base_model=first.base_model,
            trainable_params=first.trainable_params, total_params=first.total_params, best_epoch=first.best_epoch,
            val_macro_f1=self.val_macro_f1, epochs_run=first.epochs_run, seconds=round(self.seconds + sum(m.seconds for m in trained), 1),
            task=first.task, loss_plot=self.plot, history=first.history, temperature=self.temperature, val_ece_raw=self.val_ece_raw,
            val_ece=self.val_ece, val_select=self.val_select, best_weights=f"soup of {len(self.used)}", train_rows=first.train_rows,
            soup={"method": self.method, "members": self.members, "used": self.used, "member_val": self.member_val, "start": self.start})


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def check_members(members: list[Path]) -> tuple[str | None, list[str]]:
    """(the shared start, notes) of models a soup can average; UserError listing every reason they cannot be."""
    from safetensors import safe_open

    problems: list[str] = []
    if len(members) < 2:
        problems.append(f"a soup needs at least two members, got {len(members)}")
    seen_paths = [str(m.resolve()) for m in members]
    for m in {p for p in seen_paths if seen_paths.count(p) > 1}:
        problems.append(f"{m} is listed more than once: each member is one model")
    usable = []
    for m in members:
        if (m / "adapter_config.json").is_file():
            problems.append(f"{m}: a soft-prompt adapter (finetune.method prompt/prefix) keeps its weights apart from its base; a soup "
                            "averages full model folders (finetune.method full, or lora/ia3, which are merged)")
        elif not (m / "config.json").is_file() or not (m / WEIGHTS).is_file():
            problems.append(f"{m}: not a fine-tuned model folder (config.json and {WEIGHTS} expected)")
        else:
            usable.append(m)
    shapes = {}
    for m in usable:
        with safe_open(str(m / WEIGHTS), framework="pt") as f:
            shapes[m] = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    configs = {m: _config(m) for m in usable}
    recipe = {m: {k: v for k, v in conf.items() if k not in _INCIDENTAL and k != "lmops_start"} for m, conf in configs.items()}
    if usable:
        first = usable[0]
        ref = recipe[first]
        for m in usable[1:]:
            conf = recipe[m]
            differ = sorted(k for k in set(ref) | set(conf) if ref.get(k) != conf.get(k))
            if differ:
                problems.append(f"{m}: its config differs from {first}'s in " + ", ".join(f"{k} ({conf.get(k)!r} vs {ref.get(k)!r})" for k in differ[:6])
                                + ("" if len(differ) <= 6 else f" and {len(differ) - 6} more") + ": the members must be one recipe's runs")
            elif shapes[m] != shapes[first]:
                odd = sorted(k for k in set(shapes[m]) | set(shapes[first]) if shapes[m].get(k) != shapes[first].get(k))
                problems.append(f"{m}: its weights differ from {first}'s in name or shape ({', '.join(odd[:4])})")
    starts = {m: configs[m].get("lmops_start") for m in usable}
    recorded = {s for s in starts.values() if s}
    notes: list[str] = []
    if len(recorded) > 1:
        problems.append("the members started from different weights (" + ", ".join(f"{m}: {s}" for m, s in starts.items()) + "): their heads "
                        "were drawn apart, and the average of unrelated heads is not a model. Fine-tune them with one finetune.init_seed "
                        "(and the same base)")
    elif any(not s for s in starts.values()) and usable:
        unknown = [str(m) for m, s in starts.items() if not s]
        notes.append(f"{len(unknown)} of the {len(usable)} members do not record the weights they started from (fine-tuned before lmops "
                     "recorded it): that they share one start is assumed, not checked")
    if problems:
        raise UserError("these models cannot be averaged into a soup:\n  - " + "\n  - ".join(problems))
    return (recorded.pop() if recorded else None), notes


def average(members: list[Path], out: Path) -> Path:
    """``out``: the first member's folder (config, tokenizer) with every floating-point weight the members' mean
    (summed in float64, saved in the members' dtype); integer buffers are the first member's."""
    from safetensors.torch import load_file, save_file

    from lmops.tasks import calibration, seen

    sums, dtypes, fixed = {}, {}, {}
    for m in members:
        for k, v in load_file(str(m / WEIGHTS)).items():
            if not v.is_floating_point():
                fixed.setdefault(k, v)
            elif k in sums:
                sums[k] += v.double()
            else:
                sums[k], dtypes[k] = v.double(), v.dtype
    weights = {**fixed, **{k: (v / len(members)).to(dtypes[k]) for k, v in sums.items()}}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in members[0].iterdir():  # config and tokenizer; not what is the first member's own
        if f.is_file() and f.name not in (WEIGHTS, calibration.FILE, seen.FILE):
            shutil.copy2(f, out / f.name)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / WEIGHTS), metadata={"format": "pt"})
    return out


def soup(members: list[str | Path], val_path: Path, labels: list[str], ft: FinetuneParams, method: str, out_dir: Path,
         progress: bool = True) -> SoupSummary:
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from lmops.tasks import calibration, seen
    from lmops.tasks.finetune import selection_score, source_scores
    from lmops.tasks.predict import load_classifier, predict_logits, saved_max_length

    if method not in ("uniform", "greedy"):
        raise UserError(f"soup.method {method!r} is not one of uniform, greedy")
    kind = ft.kind
    t0 = time.perf_counter()
    members = [Path(m) for m in members]
    start, notes = check_members(members)
    for note in notes:
        print(f"soup: {note}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    val = pd.read_parquet(val_path)
    inputs, targets = kind.inputs(val), kind.targets(val, labels)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
    max_length = saved_max_length(members[0]) or ft.max_length

    sources = val["source"].tolist() if "source" in val else []

    def score(folder: Path):
        """(validation scores, raw logits) of a model folder: uncalibrated, so members and soups are read alike.
        ``select`` is the score fine-tuning chose its epoch by (``finetune.select_on``: e.g. the mean over sources)."""
        model, tok = load_classifier(str(folder), labels, kind)
        model.lmops_calibrator = calibration.Identity()
        logits = predict_logits(model, tok, inputs, kind, labels, max_length, 128)
        v = kind.validation_score(logits, targets, labels, loss_fn)
        by_source = source_scores(kind, logits, targets, sources, labels, loss_fn) if len(set(sources)) > 1 else {}
        return {**v, "select": selection_score(v["select"], by_source, ft.select_on)}, logits

    bar = tqdm(total=len(members) + (1 if method == "uniform" else len(members) - 1), desc=f"soup ({method})", disable=not progress, unit="model")
    member_scores = []
    for m in members:
        member_scores.append(score(m)[0])
        bar.update(1)
    model_dir = out_dir / "model"
    path: list[dict] = []
    if method == "uniform":
        used = list(members)
        best, logits = score(average(used, model_dir))
        bar.update(1)
    else:  # greedy
        order = sorted(range(len(members)), key=lambda i: -member_scores[i]["select"])  # stable: ties keep the given order
        used = [members[order[0]]]
        best, logits = score(members[order[0]])
        path.append({"member": str(members[order[0]]), "select": round(best["select"], 4), "kept": True})
        trial = out_dir / "trial"
        for i in order[1:]:
            s, trial_logits = score(average([*used, members[i]], trial))
            kept = s["select"] >= best["select"]
            path.append({"member": str(members[i]), "select": round(s["select"], 4), "kept": kept})
            if kept:
                used.append(members[i])
                best, logits = s, trial_logits
            bar.update(1)
        shutil.rmtree(trial, ignore_errors=True)
        average(used, model_dir)
    bar.close()
    conf = _config(model_dir)
    conf["lmops_soup"] = {"method": method, "members": len(used)}  # the folder says what it is, wherever it is copied
    (model_dir / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    calibrated = None
    if ft.calibration != "none" and kind.calibrated:
        calibrated = calibration.fit(ft.calibration, logits, targets)
        calibration.write(model_dir, *calibrated)
    # selected on validation, and holding all its members fitted on
    seen.record(model_dir, [val], inherit=used)
    from lmops.tasks.plots import bars

    names = [f"member {i + 1}" + ("" if m in used else " (left out)") for i, m in enumerate(members)]
    plot = bars({**dict(zip(names, (s["select"] for s in member_scores))), f"soup of {len(used)}": best["select"]}, out_dir / "scores.png",
                f"validation score: members and their {method} soup", ylabel="validation score")
    summary = SoupSummary(
        model_dir=str(model_dir), members=[str(m) for m in members], used=[str(m) for m in used], method=method,
        member_val=[round(s["select"], 4) for s in member_scores], val_select=round(best["select"], 4), val_macro_f1=round(best["macro"], 4),
        start=start, seconds=round(time.perf_counter() - t0, 1), temperature=calibrated[0].temperature if calibrated else None,
        val_ece_raw=calibrated[1]["ece"] if calibrated else None, val_ece=calibrated[2]["ece"] if calibrated else None, greedy=path,
        plot=str(plot), notes=notes)
    (out_dir / "soup.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary
