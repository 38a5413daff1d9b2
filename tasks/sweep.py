"""Sweeps: search any model params for the best *validation* score with Optuna (TPE sampling, median pruning
on each epoch's validation score), every trial an MLflow run nested under the sweep's run, and the best params
written out as a config layer that ``lmops run --params`` takes.

The test split is never looked at: it stays for the gate, so a sweep cannot fit it. Trials go through the
same stage functions as a run, with the stage cache: a trial that changes only fine-tuning params reuses the
tokenization and pretraining of the first.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from lmops.config import LabeledFileParams
from lmops.errors import UserError

# Sections a trial can change on a fixed data snapshot (ingest/validate would need another snapshot; the gate,
# registry and operational sections do not change the model).
SEARCHABLE = ("tokenize", "pretrain", "finetune")


class Dim(BaseModel):
    """One searched param: a range (``low``/``high``, ``log`` for rates, ``step`` for integers) or ``choices``."""

    model_config = ConfigDict(extra="forbid")
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    int: bool = False  # an integer range
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Dim":
        if self.choices is None and (self.low is None or self.high is None):
            raise ValueError("give either choices: [...] or low and high")
        if self.choices is not None and (self.low is not None or self.high is not None):
            raise ValueError("choices and low/high exclude each other")
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        return self


def _searchable(key: str) -> str:
    if key.split(".", 1)[0] not in SEARCHABLE:
        raise ValueError(f"a sweep searches {', '.join(s + '.*' for s in SEARCHABLE)} (one data snapshot), not {key!r}")
    return key


SpaceKey = Annotated[str, AfterValidator(_searchable)]  # checked per key, reported with the values' problems


class SweepSetParams(LabeledFileParams):
    """An out-of-source selection set: a labeled file of another source, never trained on (its rows that are also
    training or validation data are left out and counted), scored after each completed trial."""

    path: str  # relative to the project root


class SweepSpec(BaseModel):
    """A sweep's YAML file (``lmops sweep --space FILE``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="sweep", pattern=r"^[A-Za-z0-9_.-]+$")
    # NER: entity F1 on the validation split; val_select: the score early stopping uses (finetune.select_on, e.g. the
    # mean over the validation split's sources), which is also what pruning compares epoch by epoch
    objective: Literal["val_macro_f1", "val_entity_f1", "val_select"] = "val_macro_f1"
    trials: int = Field(default=20, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)  # no new trial starts after this; the running one finishes
    # from the 2nd epoch on, stop a trial whose validation score is below the median of earlier trials at that epoch
    pruning: bool = True
    space: dict[SpaceKey, Dim]
    # Choose on out-of-source data as well as in source: with sets, a completed trial's value is
    # (1 - sets_weight) * the validation objective + sets_weight * the mean of its scores on these sets (macro-F1;
    # entity F1 for NER). Pruning still compares validation epoch by epoch. Keep them apart from gate.sets: a set the
    # configuration was chosen on is no longer an unseen canary for the gate.
    sets: dict[str, SweepSetParams] = Field(default_factory=dict)
    sets_weight: float = Field(default=0.5, gt=0, le=1)

    @field_validator("space")
    @classmethod
    def _not_empty(cls, space: dict) -> dict:
        if not space:
            raise ValueError("space is empty")
        return space


@dataclass
class Trial:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL
    params: dict[str, Any]
    value: float | None
    validation: float | None = None  # the validation objective alone (value mixes in the sets when there are any)
    sets: dict[str, float] = field(default_factory=dict)  # score on each of spec.sets
    epochs: list[float] = field(default_factory=list)
    seconds: float = 0.0
    mlflow_run_id: str = ""
    reused: bool = False  # fine-tuning result reused from the stage cache (the same params were tried before)


@dataclass
class SweepResult:
    name: str
    objective: str
    best_value: float
    best_params: dict[str, Any]
    best_layer: str
    trials: list[Trial]
    report: str
    plot: str
    mlflow_run_id: str
    study_db: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_spec(path: Path) -> SweepSpec:
    import yaml
    from pydantic import ValidationError

    if not path.is_file():
        raise UserError(f"--space {path} does not exist")
    try:
        return SweepSpec.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(x) for x in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise UserError(f"{path}: {len(lines)} problem(s) in the sweep file:\n" + "\n".join(lines)) from exc


def check_space(spec: SweepSpec, load) -> None:
    """Every key names a real param and every value the space can produce is valid for it: all problems at once.
    ``load(overrides)`` builds Params (lmops.config.load_params over the user's files)."""
    problems = []
    for key, dim in spec.space.items():
        for value in (dim.choices if dim.choices is not None else [dim.low, dim.high]):
            try:
                load([f"{key}={_render(value, dim)}"])
            except Exception as exc:  # noqa: BLE001 - collected, reported together
                problems.append(f"  {key}={_render(value, dim)}: {str(exc).splitlines()[-1].strip()}")
    if problems:
        raise UserError("the sweep's space has values params.yaml would refuse:\n" + "\n".join(problems))


def _render(value: Any, dim: Dim) -> str:
    if dim.int and isinstance(value, float):
        value = int(value)
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def _suggest(trial, key: str, dim: Dim):
    if dim.choices is not None:
        return trial.suggest_categorical(key, dim.choices)
    if dim.int:
        return trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)


def layer_of(params: dict[str, Any]) -> dict[str, Any]:
    """{"finetune.lr": 1e-4} → {"finetune": {"lr": 1e-4}}: a YAML layer for ``--params``."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def set_metric(objective: str) -> str:
    """The metric a trial is scored by on ``spec.sets``: the one its validation objective is about."""
    return "micro_f1" if objective == "val_entity_f1" else "macro_f1"


def combined(spec: SweepSpec, validation: float, sets: dict[str, float]) -> float:
    """A trial's value: its validation objective, mixed with its mean score on the out-of-source sets."""
    if not sets:
        return validation
    return (1 - spec.sets_weight) * validation + spec.sets_weight * sum(sets.values()) / len(sets)


def run_sweep(spec: SweepSpec, load, data, out: Path, train, experiment: str, seed: int, progress: bool = True,
              score_sets=None) -> SweepResult:
    """Optimise ``spec.objective`` over ``spec.space``.

    ``load(overrides) -> Params``; ``train(p, out_dir, on_epoch) -> FinetuneSummary`` runs one trial's stages on
    ``data`` (the caller's stage functions); ``on_epoch(epoch, score)`` may raise optuna.TrialPruned.
    ``score_sets(p, summary, out_dir) -> {set: score}`` scores a completed trial's model on ``spec.sets`` (required
    when there are sets). The study is kept in ``out/study.db`` (SQLite): re-running the same command continues it."""
    if spec.sets and score_sets is None:
        raise UserError(f"sweep {spec.name}: sets {sorted(spec.sets)} given, but nothing to score them with")
    import mlflow
    import optuna
    import yaml

    from lmops.tasks import registry

    registry.client()  # the tracking URI (embedded SQLite or the team's server), schema created once
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2) if spec.pruning else optuna.pruners.NopPruner())
    done_before = len([t for t in study.trials if t.state.is_finished()])
    # a continued study compares new trials' values with the old ones': they must mean the same thing
    definition = {"objective": spec.objective, "sets": sorted(spec.sets), "sets_weight": spec.sets_weight if spec.sets else None}
    before = study.user_attrs.get("value_definition")
    if done_before and before is not None and before != definition:
        raise UserError(f"{out / 'study.db'}: its {done_before} trials were valued as {before}, this sweep file values them as {definition}; "
                        f"give it another --out (or name) to start a new study, or restore objective, sets and sets_weight")
    study.set_user_attr("value_definition", definition)
    mlflow.set_experiment(experiment)
    start = time.perf_counter()
    with mlflow.start_run(run_name=f"sweep {spec.name}") as parent:
        mlflow.set_tags({"lmops.sweep": spec.name, "lmops.sweep.objective": spec.objective})
        mlflow.log_dict(spec.model_dump(mode="json"), "sweep.json")

        def objective(trial) -> float:
            chosen = {k: _suggest(trial, k, d) for k, d in spec.space.items()}
            p = load([f"{k}={_render(v, spec.space[k])}" for k, v in chosen.items()])
            t0 = time.perf_counter()
            with mlflow.start_run(run_name=f"{spec.name} trial {trial.number}", nested=True) as child:
                trial.set_user_attr("mlflow_run_id", child.info.run_id)
                mlflow.log_params({k: v for k, v in chosen.items()})
                mlflow.set_tag("lmops.sweep.trial", str(trial.number))
                scores: list[float] = []

                def on_epoch(epoch: int, score: float) -> None:
                    scores.append(score)
                    mlflow.log_metric(spec.objective, score, step=epoch)
                    trial.report(score, epoch)
                    if trial.should_prune():
                        mlflow.set_tag("lmops.sweep.state", "PRUNED")
                        raise optuna.TrialPruned(f"epoch {epoch}: {spec.objective} {score:.4f} below the median of earlier trials")

                s = train(p, out / f"trial-{trial.number:03d}", on_epoch)
                validation = getattr(s, spec.objective, None)  # val_entity_f1 exists for NER only
                validation = float(validation if validation is not None else s.val_macro_f1)
                on_sets = {name: float(v) for name, v in score_sets(p, s, out / f"trial-{trial.number:03d}" / "sets").items()} if spec.sets else {}
                value = combined(spec, validation, on_sets)
                trial.set_user_attr("epochs", scores)
                trial.set_user_attr("reused", not scores)
                trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
                trial.set_user_attr("validation", validation)
                trial.set_user_attr("sets", on_sets)
                mlflow.log_metric(f"best_{spec.objective}", validation)
                for name, v in on_sets.items():
                    mlflow.log_metric(f"set.{name}.{set_metric(spec.objective)}", v)
                if on_sets:
                    mlflow.log_metric("sweep_value", value)
                mlflow.set_tag("lmops.sweep.state", "COMPLETE")
            return value

        remaining = max(spec.trials - done_before, 0)
        if remaining:
            study.optimize(objective, n_trials=remaining, timeout=spec.time_budget_s, show_progress_bar=progress)
        trials = [Trial(number=t.number, state=t.state.name, params=dict(t.params), value=t.value,
                        validation=t.user_attrs.get("validation", t.value), sets=t.user_attrs.get("sets") or {},
                        epochs=t.user_attrs.get("epochs") or [v for _, v in sorted(t.intermediate_values.items())],
                        seconds=t.user_attrs.get("seconds", round(t.duration.total_seconds(), 1) if t.duration else 0.0),
                        mlflow_run_id=t.user_attrs.get("mlflow_run_id", ""), reused=bool(t.user_attrs.get("reused")))
                  for t in study.trials if t.state.is_finished()]
        if not any(t.state == "COMPLETE" for t in trials):
            raise UserError(f"sweep {spec.name}: no trial completed ({len(trials)} finished: {sorted({t.state for t in trials})})")
        best = study.best_trial
        layer = out / "best.yaml"
        layer.write_text(f"# lmops sweep {spec.name}: trial {best.number} of {len(trials)}, {_value_words(spec, trials, best.number)}\n"
                         f"# use it: lmops run --params {layer}\n" + yaml.safe_dump(layer_of(dict(best.params)), sort_keys=True))
        plot = _plot(trials, spec.objective, out / "trials.png", "value (validation and sets)" if spec.sets else None)
        report = _report(spec, trials, best.number, layer, out / "report.md")
        mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
        mlflow.log_metric("best_value" if spec.sets else f"best_{spec.objective}", float(best.value))
        for f in (layer, plot, report):
            mlflow.log_artifact(str(f))
    return SweepResult(name=spec.name, objective=spec.objective, best_value=round(float(best.value), 4), best_params=dict(best.params),
                       best_layer=str(layer), trials=trials, report=str(report), plot=str(plot), mlflow_run_id=parent.info.run_id,
                       study_db=str(out / "study.db"), seconds=round(time.perf_counter() - start, 1))


def trial_models(out: Path) -> list[Path]:
    """The model folders a sweep's trials saved (``out/trial-NNN/finetune/model``), in trial order: what ``lmops soup
    --sweep`` averages. A pruned trial saved none."""
    found = sorted(f for f in Path(out).glob("trial-*/finetune/model") if (f / "config.json").is_file())
    if not found:
        raise UserError(f"{out}: no trial saved a model (trial-NNN/finetune/model): give the --out folder of a `lmops sweep` whose trials completed")
    return found


def _plot(trials: list[Trial], objective: str, path: Path, value_label: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    done = [t for t in trials if t.value is not None]
    a.scatter([t.number for t in done], [t.value for t in done], c="tab:blue", label="complete")
    best = []
    for t in sorted(done, key=lambda t: t.number):
        best.append((t.number, max(t.value, best[-1][1]) if best else t.value))
    if best:
        a.step(*zip(*best), where="post", color="tab:green", label="best so far")
    pruned = [t for t in trials if t.state == "PRUNED" and t.epochs]
    a.scatter([t.number for t in pruned], [t.epochs[-1] for t in pruned], c="tab:red", marker="x", label="pruned (last epoch)")
    a.set_xlabel("trial")
    a.set_ylabel(value_label or objective)
    a.legend(fontsize=8)
    for t in trials:
        if t.epochs:
            b.plot(range(1, len(t.epochs) + 1), t.epochs, color="tab:red" if t.state == "PRUNED" else "tab:blue", alpha=0.6)
    b.set_xlabel("epoch")
    b.set_ylabel(f"{objective} (per trial)")
    fig.suptitle("sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _value_words(spec: SweepSpec, trials: list[Trial], best: int) -> str:
    t = next(t for t in trials if t.number == best)
    if not spec.sets:
        return f"{spec.objective} {t.value:.4f} on the validation split"
    on = ", ".join(f"{name} {v:.4f}" for name, v in t.sets.items())
    return (f"value {t.value:.4f} = {1 - spec.sets_weight:g} x {spec.objective} {t.validation:.4f} on the validation split "
            f"+ {spec.sets_weight:g} x the mean {set_metric(spec.objective)} on the out-of-source sets ({on})")


def _report(spec: SweepSpec, trials: list[Trial], best: int, layer: Path, path: Path) -> Path:
    keys, names = list(spec.space), list(spec.sets)
    chosen = (f"**{spec.objective}** on the validation split" if not names else
              f"**{1 - spec.sets_weight:g} × {spec.objective}** on the validation split **+ {spec.sets_weight:g} × the mean "
              f"{set_metric(spec.objective)}** on out-of-source sets never trained on ({', '.join(names)})")
    lines = [f"# Sweep {spec.name}", "", f"{len(trials)} trials ({sum(t.state == 'PRUNED' for t in trials)} pruned) · chosen on "
             f"{chosen} (the test split is left to the gate) · best: trial {best}", "",
             f"Best params as a config layer: `{layer}` (`lmops run --params {layer}`)", "",
             "| trial | state | " + " | ".join(keys) + f" | {spec.objective} | " + "".join(f"{n} | " for n in names)
             + ("value | " if names else "") + "epochs | s |", "|" + "---|" * (len(keys) + 5 + len(names) + bool(names))]
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for t in sorted(trials, key=lambda t: (t.value is None, -(t.value or 0))):
        mark = " **best**" if t.number == best else ""
        vals = " | ".join(f"{t.params.get(k):.3g}" if isinstance(t.params.get(k), float) else str(t.params.get(k)) for k in keys)
        on = "".join(f"{fmt(t.sets.get(n))} | " for n in names) + (f"{fmt(t.value)} | " if names else "")
        lines.append(f"| {t.number}{mark} | {t.state.lower()} | {vals} | {fmt(t.validation)} | {on}"
                     f"{len(t.epochs) if t.epochs else ('cached' if t.reused else '')} | {t.seconds} |")
    path.write_text("\n".join(lines) + "\n\n![trials](trials.png)\n")
    return path
