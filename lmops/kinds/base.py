"""What every task kind provides. The defaults are those of sentence classification (one label per
text); a kind overrides what differs. Heavy libraries are imported inside the methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Reading:
    """How a fine-tuned model reads its inputs beyond its tokenizer. Fine-tuning saves it in the model's config
    (``lmops_casing``, ``lmops_entity_marker``) and every encoder of the model's inputs (training, prediction,
    evaluation, the gate's read-back, the monitor, distillation) reads it from there, so a model is always read the
    way it was trained."""

    casing: str = "none"  # finetune.casing: capitalised words marked through the token-type embeddings (token kinds)
    entity_marker: str = ""  # finetune.entity_marker: the target entity's mentions wrapped in it (entity kinds)

    @classmethod
    def of(cls, model) -> "Reading":
        config = getattr(model, "config", None)
        return cls(casing=getattr(config, "lmops_casing", None) or "none", entity_marker=getattr(config, "lmops_entity_marker", None) or "")


class TaskKind:
    """One kind of supervised task: its inputs, targets, head, prediction, metrics, GX expectations and
    the shape of its ingested rows. Registered in ``lmops.kinds.KINDS`` by ``name``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Labeled sources of this kind must have this format (None: any format no other kind owns).
    labeled_format: ClassVar[str | None] = None
    # This kind is the only one that can read ``labeled_format`` (its rows carry what others can't use).
    owns_format: ClassVar[bool] = False
    # Class-weighted loss when finetune.class_weighting is on.
    class_weighting: ClassVar[bool] = True
    soft_prompts: ClassVar[bool] = True  # prompt / prefix tuning apply
    label_drift: ClassVar[bool] = True  # the label mix can be compared with the previous data version
    # entity-labelled (entity, text) pairs can be extra training rows (finetune.entity_auxiliary): a sentence classifier
    entity_auxiliary: ClassVar[bool] = True
    # one vector per input, so finetune.pooling can choose how it is made (tasks/pooling.py); taggers: False
    pools: ClassVar[bool] = True

    # --- params --------------------------------------------------------------------------------------
    def check_params(self, labeled_formats: list[str], method: str, owners: dict[str, "TaskKind"]) -> list[str]:
        """Cross-field problems between finetune.task and the rest of params, each naming the key to fix."""
        errors = []
        if self.labeled_format and any(f != self.labeled_format for f in labeled_formats):
            errors.append(f"finetune.task is {self.name} ({self.description}), which reads {self.labeled_format} sources: "
                          f"every labeled source needs format: {self.labeled_format}")
        for fmt in sorted(set(labeled_formats)):
            owner = owners.get(fmt)
            if owner is not None and owner is not self:
                errors.append(f"a {fmt} source carries {owner.carries}, but finetune.task is {self.name!r}: set finetune.task: {owner.name}")
        if not self.soft_prompts and method in {"prompt", "prefix"}:
            errors.append(f"finetune.method prompt/prefix is for sequence tasks; use full, lora or ia3 for {self.description}")
        return errors

    carries: ClassVar[str] = ""  # what an owned format's rows hold, for the error message

    # --- ingest --------------------------------------------------------------------------------------
    def labeled_rows(self, item, src, params, labels: list[str]) -> tuple[str | None, list[dict[str, Any]]]:
        """(reason to quarantine, []) or (None, rows) for one labeled source record."""
        from lmops.text import normalize_text

        text = normalize_text(item.text)
        if len(text) < params.min_chars:
            return f"text shorter than ingest.min_chars={params.min_chars} ({len(text)} chars)", []
        if len(text) > params.max_chars:
            return f"labeled text longer than ingest.max_chars={params.max_chars} ({len(text)} chars)", []
        return self.rows(item, src, text, labels, {"source": src.name, "date": item.date})

    def rows(self, item, src, text: str, labels: list[str], base: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
        import json

        if item.label is None:
            if item.entities and src.mixed_entities == "auxiliary" and self.entity_auxiliary:
                return self.auxiliary_row(item, src, text, labels, base)
            if item.entities:
                return "mixed entity sentiment: no single headline label (entity labels kept in source)", []
            return "missing label", []
        raw = str(item.label).strip()
        label = self.label_in(self.map_label(src, raw), labels)
        if label not in labels:
            return f"unknown label {raw!r}: map it in ingest.sources[{src.name}].label_map or add it to validate.labels {labels}", []
        entities = json.dumps(item.entities, sort_keys=True) if item.entities else None
        return None, [{**base, "id": f"{src.name}:{item.row}", "text": text, "label": label, "entities": entities}]

    def entity_labels(self, item, src, labels: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
        """(reason to quarantine, []) or (None, [(normalized entity, label)]) of a record's entity labels, in entity order."""
        from lmops.text import normalize_text

        pairs = []
        for entity, raw in sorted(item.entities.items()):
            label = self.label_in(self.map_label(src, raw), labels)
            if label not in labels:
                return f"unknown label {raw!r} for entity {entity!r}: map it in ingest.sources[{src.name}].label_map", []
            if not normalize_text(entity):
                return f"empty entity name (labelled {raw!r})", []
            pairs.append((normalize_text(entity), label))
        return None, pairs

    def auxiliary_row(self, item, src, text: str, labels: list[str], base: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
        """A headline without a label of its own, kept for its entity labels (ingest writes it to auxiliary.parquet)."""
        import json

        reason, pairs = self.entity_labels(item, src, labels)
        if reason:
            return reason, []
        return None, [{**base, "id": f"{src.name}:{item.row}", "text": text, "label": None, "entities": json.dumps(dict(pairs), sort_keys=True)}]

    def auxiliary_pairs(self, frame, labels: list[str], sep: str) -> tuple[list, list, list]:
        """(inputs, label ids, sources) of the (entity, text) pairs in ``frame``'s ``entities`` column: one training row
        ``entity <sep> text`` per entity, with the entity's label; the source is ``<source>:entities``."""
        import json

        index = {l: i for i, l in enumerate(labels)}
        inputs, targets, sources = [], [], []
        for text, ents, source in zip(frame["text"], frame["entities"], frame["source"]):
            if not isinstance(ents, str) or not ents:  # None / NaN: a row of a source without entity labels
                continue
            for entity, label in sorted(json.loads(ents).items()):
                label = self.label_in(label, labels)
                if label not in index:
                    from lmops.errors import DataError

                    raise DataError(f"entity {entity!r} of {text[:60]!r} ({source}) is labelled {label!r}, not one of {labels}: "
                                    f"map it in ingest.sources[{source}].label_map and re-ingest")
                inputs.append(f"{entity} {sep} {text}")
                targets.append(index[label])
                sources.append(f"{source}:entities")
        return inputs, targets, sources

    @staticmethod
    def label_in(label: str, labels: list[str]) -> str:
        """``label`` as spelled in ``labels`` when it differs only by case ("Positive" → "positive")."""
        if label in labels:
            return label
        folded = {x.casefold(): x for x in labels}
        return folded.get(label.casefold(), label) if len(folded) == len(labels) else label

    @staticmethod
    def map_label(src, raw: str) -> str:
        """A source's raw label (or tag) through its ``label_map``; unmapped values pass as they are."""
        return src.label_map.get(raw, raw)

    def split_groups(self, frame):
        """Rows that must land in the same split (a Series aligned with ``frame``), or None."""
        return None

    def label_values(self, labels):
        """Every label occurrence in a ``label`` column (a pandas Series), for counts and set checks."""
        return labels

    def eval_file_format(self, by_suffix: str) -> str:
        """The ingest format of a user's ``--data`` file for this kind (default: from its suffix)."""
        return by_suffix

    # --- validation (Great Expectations) -------------------------------------------------------------
    def expectations(self, E, p, drift: list) -> list:
        """Label expectations of this kind, after the shared text/row ones."""
        return [E.ExpectColumnValuesToBeInSet(column="label", value_set=list(p.labels)),
                E.ExpectColumnValuesToBeUnique(column="text", mostly=p.mostly)] + drift

    # --- model ---------------------------------------------------------------------------------------
    def auto_model(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def peft_task_type(self):
        from peft import TaskType

        return TaskType.SEQ_CLS

    def inputs(self, frame) -> list:
        """Model inputs of a labeled frame."""
        return frame["text"].tolist()

    def targets(self, frame, labels: list[str]) -> list:
        """Label ids per row."""
        index = {l: i for i, l in enumerate(labels)}
        return [index[l] for l in frame["label"]]

    def encode(self, tokenizer, inputs: list, max_length: int, reading: Reading = Reading()):
        """A padded batch for the model, read as ``reading`` (the model's, :meth:`Reading.of`) says."""
        return tokenizer(inputs, truncation=True, max_length=max_length, padding=True, return_tensors="pt")

    def windows(self, tokenizer, inputs: list, max_length: int) -> tuple[list, Any]:
        """Inputs as the pieces the model reads, and a plan :meth:`join` puts their outputs back by. Texts are
        truncated at ``max_length`` (the tokenizer cuts them): one piece per input, no plan."""
        return inputs, None

    def join(self, units: list, plan: Any) -> list:
        return units

    def training_windows(self, tokenizer, inputs: list, targets: list, labels: list[str], max_length: int) -> tuple[list, list, list[int]]:
        """Training rows as the model reads them: (inputs, targets, the source row of each)."""
        return inputs, targets, list(range(len(inputs)))

    def scored(self, logits, enc, targets: list):
        """(logits, target ids): one row per prediction the training loss scores, ignored ones with target -100."""
        import torch

        return logits, torch.as_tensor(targets, dtype=torch.long)

    def batch_loss(self, loss_fn, logits, enc, targets: list):
        return loss_fn(*self.scored(logits, enc, targets))

    def lengths(self, tokenizer, inputs: list, max_length: int, reading: Reading = Reading()) -> list[int]:
        """What each input is padded up to in a batch: its word pieces as :meth:`encode` reads it, at most
        ``max_length`` (``finetune.group_by_length`` batches inputs of similar length by it)."""
        out = []
        for i in range(0, len(inputs), 2048):
            out += self.encode(tokenizer, inputs[i : i + 2048], max_length, reading)["attention_mask"].sum(1).tolist()
        return out

    # --- prediction ----------------------------------------------------------------------------------
    def fill_index(self, labels: list[str]) -> int:
        """The label given to what the model could not see (truncated words)."""
        return 0

    def batch_logits(self, enc, logits, batch: list, fill: int) -> list:
        """One batch's logits as units for ``stack`` (here: the batch tensor; token kinds: one per sentence)."""
        return [logits]

    def stack(self, units: list, num_labels: int):
        """All batches' units as the kind's logits: one [n, labels] tensor here."""
        import torch

        return torch.cat(units) if units else torch.zeros((0, num_labels))

    def subset(self, logits, idx: list[int]):
        """The logits of some rows (e.g. one source's), in the kind's own form."""
        return logits[idx]

    def decode(self, logits, labels: list[str]) -> tuple[list[str], list[float]]:
        """Predicted label per row and its confidence."""
        probs = logits.softmax(-1)
        return [labels[j] for j in probs.argmax(-1).tolist()], probs.max(-1).values.tolist()

    # --- metrics -------------------------------------------------------------------------------------
    def validation_score(self, logits, targets: list, labels: list[str], loss_fn) -> dict[str, float]:
        """Validation loss, macro-F1 and the early-stopping score (``select``)."""
        import torch

        from lmops.metrics import macro_f1

        val_loss = float(loss_fn(logits, torch.as_tensor(targets, dtype=torch.long))) if len(targets) else float("nan")
        f1 = macro_f1(targets, logits.argmax(-1).tolist(), len(labels))
        return {"val_loss": val_loss, "macro": f1, "select": f1}

    def slices(self, frame) -> dict[str, list[int]]:
        """Row subsets an evaluation also scores on their own (report["slices"]): each source, where there are several."""
        if "source" not in frame or frame["source"].nunique() < 2:
            return {}
        return {str(name): idx.tolist() for name, idx in frame.groupby("source").indices.items()}

    def report(self, logits, refs: list, labels: list[str]) -> tuple[dict[str, Any], list[str], list[float], Any]:
        """(report, predicted label text, confidence, scorer of a row subset) for an evaluation."""
        from lmops.metrics import bootstrap_ece, calibration, classification_report

        probs = logits.softmax(-1)
        preds = probs.argmax(-1).tolist()
        report = classification_report(preds, refs, labels)
        report["calibration"] = calibration(probs, refs)
        conf, right = probs.max(-1).values.tolist(), [int(p == r) for p, r in zip(preds, refs)]
        report["calibration"]["ci95"] = bootstrap_ece(conf, right)

        def score(idx):
            sub = classification_report([preds[i] for i in idx], [refs[i] for i in idx], labels)
            return {**sub, "ece": calibration(probs[list(idx)], [refs[i] for i in idx])["ece"]}

        text, confidence = self.decode(logits, labels)
        return report, text, confidence, score

    class_noun: ClassVar[str] = "class"  # a row of the per-class table
    # one softmax per row: a calibrator fitted on the validation split adjusts its confidence (tasks/calibration.py)
    calibrated: ClassVar[bool] = True
    # encode can mark capitalised words (finetune.casing): only kinds whose inputs are words
    casing_feature: ClassVar[bool] = False
    # encode can mark the target entity in the text (finetune.entity_marker): only kinds whose inputs are (entity, text)
    entity_marking: ClassVar[bool] = False
    text_inputs: ClassVar[bool] = True  # a model input is one plain text (so unlabeled corpus texts can be inputs too)
    resampled: ClassVar[str] = "rows"  # what the bootstrap intervals resample
    confusion_title: ClassVar[str] = "Confusion matrix"

    def report_headline(self, report: dict[str, Any], n: int) -> str:
        return f"accuracy **{report['accuracy']:.4f}** · macro-F1 **{report['macro_f1']:.4f}** · n = {n}"

    def interval(self, refs_text: list[str], preds: list[str], labels: list[str], seed: int) -> dict[str, list[float]]:
        """95% bootstrap intervals of the headline metrics over resampled test rows."""
        from lmops.metrics import bootstrap_interval

        index = {l: i for i, l in enumerate(labels)}
        return bootstrap_interval([index[x] for x in refs_text], [index[x] for x in preds], labels, n=1000, seed=seed)

    def paired_bootstrap(self, refs_text: list[str], preds_a: list[str], preds_b: list[str], labels: list[str], seed: int) -> dict[str, Any]:
        """(b − a) with 95% intervals over resampled test rows."""
        from lmops.metrics import bootstrap_diff

        index = {l: i for i, l in enumerate(labels)}
        return bootstrap_diff([index[x] for x in refs_text], [index[x] for x in preds_a], [index[x] for x in preds_b], labels, n=1000, seed=seed)

    def paired_bootstrap_runs(self, refs_text: list[str], runs_a: list[list[str]], runs_b: list[list[str]], labels: list[str],
                              seed: int) -> dict[str, Any]:
        """(mean of B's runs − mean of A's runs) with 95% intervals over resampled test rows and runs (seeds of a recipe)."""
        from lmops.metrics import bootstrap_diff_runs

        index = {l: i for i, l in enumerate(labels)}
        code = lambda preds: [index[x] for x in preds]  # noqa: E731
        return bootstrap_diff_runs(code(refs_text), [code(r) for r in runs_a], [code(r) for r in runs_b], labels, n=1000, seed=seed)
