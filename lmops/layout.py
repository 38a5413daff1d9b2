"""The run folder and the data snapshot, spelled once.

Stages meet only through files: each stage's inputs and outputs are named here, so neither the flow
nor the CLI builds a path like ``run / "ingest" / "test.parquet"`` by hand.

    <run>/ingest/      Snapshot: train|validation|test|corpus|quarantine.parquet, summary.json
    <run>/validate/    validation.json|md, data_docs/
    <run>/tokenize/    tokenizer/, blocks.npy, tokenize.json
    <run>/pretrain/    model/, pretrain.json, loss.png
    <run>/finetune/    model/, adapter/, finetune.json, loss.png
    <run>/evaluate/    metrics.json, report.md, predictions.parquet, confusion.png
    <run>/gate/        decision.json, champion/, champion-eval/
    <run>/readback/    the logged model read back from the artifact store
    <run>/params.json, model_card.md, run.json, FAILED
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Snapshot:
    """An ingested data snapshot: a run's ``ingest/`` folder or the versioned ``data/``."""

    dir: Path

    def split(self, name: str) -> Path:
        return self.dir / f"{name}.parquet"

    @property
    def train(self) -> Path:
        return self.split("train")

    @property
    def validation(self) -> Path:
        return self.split("validation")

    @property
    def test(self) -> Path:
        return self.split("test")

    @property
    def corpus(self) -> Path:
        return self.dir / "corpus.parquet"

    @property
    def auxiliary(self) -> Path:
        """Training-only rows kept for their entity labels (ingest.sources[].mixed_entities: auxiliary); may not exist."""
        return self.dir / "auxiliary.parquet"

    @property
    def quarantine(self) -> Path:
        return self.dir / "quarantine.parquet"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    def exists(self) -> bool:
        return self.train.is_file()

    def missing(self) -> list[str]:
        """Files a complete snapshot has and this folder lacks."""
        return [p.name for p in (self.train, self.validation, self.test, self.corpus, self.summary) if not p.is_file()]

    def require(self) -> "Snapshot":
        from lmops.errors import UserError

        if self.missing():
            raise UserError(f"{self.dir} is not an lmops data snapshot: {self.missing()} missing (pass a data/ folder that "
                            "`lmops run` versioned, or one restored by `lmops audit --restore`)")
        return self


@dataclass(frozen=True)
class RunLayout:
    """One run's folder; every stage writes below it."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def data(self) -> Snapshot:
        return Snapshot(self.root / "ingest")

    def stage(self, name: str) -> Path:
        """A stage's output folder (``tokenize``, ``pretrain``, ``finetune``, ``evaluate``, ...)."""
        return self.root / name

    @property
    def validate(self) -> Path:
        return self.root / "validate"

    @property
    def gate(self) -> Path:
        return self.root / "gate"

    @property
    def gate_decision(self) -> Path:
        return self.gate / "decision.json"

    @property
    def params_json(self) -> Path:
        return self.root / "params.json"

    @property
    def model_card(self) -> Path:
        return self.root / "model_card.md"

    @property
    def summary(self) -> Path:
        return self.root / "run.json"

    @property
    def failed_marker(self) -> Path:
        return self.root / "FAILED"
