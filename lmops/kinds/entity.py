"""Entity-targeted sentiment: one label per (entity, headline) pair, read from SEntFiN's entity labels.
The model sees ``[CLS] entity [SEP] headline [SEP]``."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from lmops.kinds.base import Reading, TaskKind


class EntityKind(TaskKind):
    name = "entity"
    description = "entity-targeted sentiment"
    labeled_format = "sentfin"
    text_inputs = False  # an input is an (entity, headline) pair
    entity_auxiliary = False  # its rows are the entity pairs already
    entity_marking = True

    def rows(self, item, src, text: str, labels: list[str], base: dict[str, Any]):
        """One row per (headline, entity); the pair is kept in ``entities`` as {entity: label}."""
        if not item.entities:
            return "no entity labels: the entity task needs (text, entity, label) triples", []
        reason, pairs = self.entity_labels(item, src, labels)
        if reason:
            return reason, []
        return None, [{**base, "id": f"{src.name}:{item.row}:{k}", "text": text, "label": label, "entities": json.dumps({entity: label})}
                      for k, (entity, label) in enumerate(pairs)]

    def split_groups(self, frame):
        # rows of one headline share an id prefix: no headline is in two splits
        return frame["id"].str.rsplit(":", n=1).str[0]

    def slices(self, frame) -> dict[str, list[int]]:
        """Each source's pairs, and the pairs of headlines whose entities disagree ("Gold shines; Silver dull") apart
        from the rest: what the entity model is for, since one label per headline is wrong there by construction."""
        out = super().slices(frame)
        mixed = (frame.groupby(self.split_groups(frame).to_numpy())["label"].transform("nunique") > 1).to_numpy()
        if mixed.any() and not mixed.all():
            out["mixed_headlines"] = mixed.nonzero()[0].tolist()
            out["consistent_headlines"] = (~mixed).nonzero()[0].tolist()
        return out

    def eval_file_format(self, by_suffix: str) -> str:
        return "sentfin"  # entity labels come as SEntFiN's Title + Decisions columns

    def expectations(self, E, p, drift: list) -> list:
        # a headline appears once per entity: the (text, entity) pair is what must be unique
        return [E.ExpectColumnValuesToBeInSet(column="label", value_set=list(p.labels)),
                E.ExpectColumnValuesToNotBeNull(column="entities"),
                E.ExpectCompoundColumnsToBeUnique(column_list=["text", "entities"], mostly=p.mostly)] + drift

    def inputs(self, frame) -> list:
        return [(next(iter(json.loads(e))), t) for e, t in zip(frame["entities"], frame["text"])]

    def encode(self, tokenizer, inputs: list, max_length: int, reading: Reading = Reading()):
        # [CLS] entity [SEP] headline [SEP]: the headline is cut, never the entity
        if reading.entity_marker:
            inputs = [(e, mark_entity(e, t, reading.entity_marker)) for e, t in inputs]
        return tokenizer([e for e, _ in inputs], [t for _, t in inputs], truncation="only_second", max_length=max_length,
                         padding=True, return_tensors="pt")


def mark_entity(entity: str, text: str, marker: str) -> str:
    """``text`` with every mention of ``entity`` (whole words, any case) wrapped in ``marker``: "Gold shines;
    * Silver * dull" for Silver. A headline with two entities of opposite sentiment reads the same for both
    otherwise, and the model must find the one the pair names by matching it against the text; a mention it cannot
    find (0.8% of SEntFiN's entities are not spelled as in their headline) leaves the text as it is."""
    return _mention(entity).sub(lambda m: f"{marker} {m.group(0)} {marker}", text)


@lru_cache(maxsize=4096)
def _mention(entity: str):
    return re.compile(r"(?<!\w)" + re.escape(entity) + r"(?!\w)", re.IGNORECASE)
