"""The model behind the numbers: a registered version resolved by alias on every run (a new champion is picked up
without a restart), downloaded once per version, with the drift reference saved beside it at registration."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmops.tasks.monitor.runtime import model_dir

REFERENCE = "monitor/reference.json"  # artifact path of the drift reference in a version's MLflow run


@dataclass
class Scorer:
    name: str
    version: str
    alias: str
    labels: list[str]
    model: Any
    tokenizer: Any
    reference: dict[str, Any] | None
    vocab: frozenset = field(default_factory=frozenset)
    run_id: str = ""
    task: str = "sequence"
    fast: Any = None  # an exported runtime (runtime.OnnxScorer) that scores sentences in place of the PyTorch model

    @property
    def ref(self) -> str:
        return f"{self.name} v{self.version}"

    def tags(self, texts: list[str], batch_size: int, max_length: int) -> list[str]:
        """A tagger's IOB2 tags per whitespace-separated word, space-joined, per text."""
        from lmops.kinds import KINDS
        from lmops.tasks.predict import predict_logits

        kind = KINDS["token"]
        logits = predict_logits(self.model, self.tokenizer, [t.split(" ") for t in texts], kind, self.labels, max_length, batch_size)
        return kind.decode(logits, self.labels)[0]

    def probabilities(self, texts: list[str], batch_size: int, max_length: int, pairs: list[str] | None = None):
        """[n, labels] probabilities in ``labels`` order (``pairs``: entity names for an entity-sentiment model)."""
        from lmops.kinds import KINDS
        from lmops.tasks.predict import predict_logits

        if self.fast is not None and pairs is None:
            return self.fast.probabilities(texts, batch_size, max_length)
        kind, inputs = (KINDS["sequence"], texts) if pairs is None else (KINDS["entity"], list(zip(pairs, texts)))
        if self.task == "token":
            raise TypeError("a tagger has tags, not probabilities: use tags()")
        logits = predict_logits(self.model, self.tokenizer, inputs, kind, self.labels, max_length, batch_size)
        return logits.softmax(-1).numpy()


def _task_of(mv) -> str:
    from lmops.tasks import registry

    return registry.run_params(mv.run_id).get("finetune.task", "sequence") if mv.run_id else "sequence"


def load(name: str, alias: str, task: str = "sequence", loaded: dict[tuple[str, str], Scorer] | None = None, runtime: str = "torch") -> Scorer:
    """``name@alias`` as it stands now. ``loaded`` (a long-lived process's cache) keeps models already read.
    ``runtime``: ``torch``, or ``onnx`` for the version's checked export (``lmops export``)."""
    from lmops.errors import UserError
    from lmops.tasks import registry
    from lmops.tasks.predict import load_classifier, saved_labels

    mv = registry.get_version(name, alias)
    if mv is None:
        known = [m["name"] for m in registry.list_models()]
        if name not in known:
            raise UserError(f"no registered model {name!r} (registered: {known or 'none'}); run `lmops run` first, or set monitor.model")
        aliases = sorted(registry.client().get_registered_model(name).aliases or {})
        raise UserError(f"{name} has no alias {alias!r} (its aliases: {aliases or 'none'}); set monitor.alias, or promote a version "
                        f"with `lmops promote {name} VERSION --reason ...`")
    key = (name, str(mv.version), runtime)
    if loaded is not None and key in loaded:
        return loaded[key]
    has = _task_of(mv)
    if has != task:
        raise UserError(f"{name} v{mv.version} is a {has!r} model; the monitor needs a {task!r} one here")
    folder = model_dir(name, str(mv.version)).parent
    if not (folder / "model").is_dir():  # downloaded whole, then renamed: a crash leaves no half model behind
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".v{mv.version}-", dir=folder.parent))
        try:
            local = registry.download_version(mv, tmp / "dl")
            (tmp / "v").mkdir()
            shutil.move(str(local), tmp / "v" / "model")
            ref = _download_reference(mv.run_id, tmp / "ref")
            if ref is not None:
                shutil.move(str(ref), tmp / "v" / "reference.json")
            try:
                (tmp / "v").rename(folder)
            except OSError:  # another process got there first; its copy is as good
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    labels = saved_labels(folder / "model")
    if labels is None:
        raise UserError(f"{name} v{mv.version} has no trained classification head with named labels; the monitor scores with a fine-tuned classifier")
    from lmops.kinds import KINDS

    if runtime != "torch" and task == "sequence":  # the export scores; the PyTorch weights are not loaded at all
        from lmops.models import load_tokenizer

        model, tokenizer = None, load_tokenizer(str(folder / "model"))
    else:
        model, tokenizer = load_classifier(str(folder / "model"), labels, KINDS[task])
        model.eval()
    ref_file = folder / "reference.json"
    reference = json.loads(ref_file.read_text()) if ref_file.is_file() else None
    scorer = Scorer(name, str(mv.version), alias, labels, model, tokenizer, reference, frozenset(reference["vocab"]) if reference else frozenset(),
                    run_id=mv.run_id or "", task=task)
    if runtime != "torch":
        from lmops.tasks.monitor.runtime import load_exported

        scorer.fast = load_exported(name, scorer.version, scorer.run_id)
    if loaded is not None:
        loaded[key] = scorer
    return scorer


def _download_reference(run_id: str | None, dst: Path) -> Path | None:
    import mlflow

    if not run_id:
        return None
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE, dst_path=str(dst)))
    except Exception:  # noqa: BLE001 - a version registered before references existed
        return None
