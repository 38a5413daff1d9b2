"""Token classification (NER): one IOB2 tag per word, read from CoNLL files. A word's tag sits on its
first sub-token; the rest and the special tokens are ignored (-100). Metrics are seqeval's
entity-level scores over exact spans."""

from __future__ import annotations

import functools
import re
from typing import Any

from lmops.kinds.base import Reading, TaskKind


class TokenKind(TaskKind):
    name = "token"
    description = "token classification (NER)"
    labeled_format = "conll"
    owns_format = True
    carries = "word tags"
    class_weighting = False  # "O" dominates; weighting it down costs precision
    entity_auxiliary = False
    soft_prompts = False
    label_drift = False  # labels are tag sequences

    # --- ingest --------------------------------------------------------------------------------------
    def labeled_rows(self, item, src, params, labels: list[str]):
        """A CoNLL sentence: normalize word by word (the tags must stay aligned), check every tag."""
        from lmops.text import normalize_text

        if item.tags is None:
            return f"no word tags: the token task reads CoNLL files (format: conll), not {src.format}", []
        words = [normalize_text(w) for w in item.words or []]
        empty = [i + 1 for i, w in enumerate(words) if not w or " " in w]
        if empty:
            return f"word {empty[0]} is empty or contains whitespace after normalization", []
        tags = [self.map_label(src, t) for t in item.tags]
        unknown = sorted(set(tags) - set(labels))
        if unknown:
            return f"unknown tag(s) {unknown}: add them to validate.labels {labels} or map them in ingest.sources[{src.name}].label_map", []
        return None, [{"source": src.name, "date": item.date, "id": f"{src.name}:{item.row:06d}", "text": " ".join(words),
                       "label": " ".join(tags), "entities": None}]

    def label_values(self, labels):
        return labels.str.split().explode()

    def eval_file_format(self, by_suffix: str) -> str:
        return "conll"  # NER files are CoNLL columns whatever their suffix

    def expectations(self, E, p, drift: list) -> list:
        # one tag per word, each from the label set
        tag = "(?:" + "|".join(re.escape(t) for t in sorted(p.labels, key=len, reverse=True)) + ")"
        return [E.ExpectColumnValuesToMatchRegex(column="label", regex=f"^{tag}(?: {tag})*$"),
                E.ExpectColumnValuesToBeUnique(column="text", mostly=p.mostly)]

    # --- model ---------------------------------------------------------------------------------------
    def auto_model(self):
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def peft_task_type(self):
        from peft import TaskType

        return TaskType.TOKEN_CLS

    def inputs(self, frame) -> list:
        return [t.split(" ") for t in frame["text"]]

    def targets(self, frame, labels: list[str]) -> list:
        index = {l: i for i, l in enumerate(labels)}
        return [[index[t] for t in tags.split(" ")] for tags in frame["label"]]

    def encode(self, tokenizer, inputs: list, max_length: int, reading: Reading = Reading()):
        enc = tokenizer(inputs, is_split_into_words=True, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        if reading.casing == "token_type":
            import torch

            # every sub-token of a word whose first letter is a capital gets segment 1, the rest 0
            caps = [[_capitalised(w) for w in words] for words in inputs]
            enc["token_type_ids"] = torch.tensor([[int(w is not None and caps[i][w]) for w in enc.word_ids(i)] for i in range(len(inputs))],
                                                 dtype=torch.long)
        return enc

    def scored(self, logits, enc, targets: list):
        # a word's first sub-token carries its tag; the others, specials and padding are -100
        return logits.flatten(0, 1), align_tags(enc, targets).flatten()

    # --- long sentences: word windows instead of a cut ------------------------------------------------
    # A sentence longer than max_length sub-tokens used to lose its tail (every word there tagged O, every entity
    # there missed: 13 of FIN3's 312). It is read as word windows that fit instead: overlapping ones to predict
    # (each word scored in the window where it has the most context), back-to-back ones to train, never cut
    # inside an entity when the entity fits a window (no window starts with an orphan I- tag).
    def windows(self, tokenizer, inputs: list, max_length: int) -> tuple[list, Any]:
        budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        pieces, plan = [], []
        for words, counts in zip(inputs, _subtoken_counts(tokenizer, inputs)):
            spans = word_windows(counts, budget, overlap=budget // 4)
            plan.append([(len(pieces) + k, a, b) for k, (a, b) in enumerate(spans)])
            pieces.extend(words[a:b] for a, b in spans)
        return pieces, plan

    def join(self, units: list, plan: Any) -> list:
        import torch

        out = []
        for spans in plan:
            if len(spans) == 1:
                out.append(units[spans[0][0]])
                continue
            n = spans[-1][2]
            rows = []
            for j in range(n):
                k, a, _ = max((s for s in spans if s[1] <= j < s[2]), key=lambda s: _context(j, s[1], s[2], n))
                rows.append(units[k][j - a])
            out.append(torch.stack(rows))
        return out

    def training_windows(self, tokenizer, inputs: list, targets: list, labels: list[str], max_length: int) -> tuple[list, list, list[int]]:
        budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        inside = {i for i, l in enumerate(labels) if l.startswith("I-")}
        out_inputs, out_targets, origin = [], [], []
        for row, (words, tags, counts) in enumerate(zip(inputs, targets, _subtoken_counts(tokenizer, inputs))):
            for a, b in word_windows(counts, budget, overlap=0, can_cut=[t not in inside for t in tags]):
                out_inputs.append(words[a:b])
                out_targets.append(tags[a:b])
                origin.append(row)
        return out_inputs, out_targets, origin

    def lengths(self, tokenizer, inputs: list, max_length: int, reading: Reading = Reading()) -> list[int]:
        # words, not word pieces: the shipped NER recipe's measured runs were grouped this way
        return [len(x) for x in inputs]

    # --- prediction ----------------------------------------------------------------------------------
    def fill_index(self, labels: list[str]) -> int:
        return labels.index("O") if "O" in labels else 0

    def batch_logits(self, enc, logits, batch: list, fill: int) -> list:
        """Per-word logits from the first sub-token of each word; words cut by max_length get ``fill``."""
        import torch

        rows = []
        for i, words in enumerate(batch):
            word = torch.zeros((len(words), logits.shape[-1]))
            word[:, fill] = 1.0
            prev = None
            for pos, w in enumerate(enc.word_ids(i)):
                if w is not None and w != prev:
                    word[w] = logits[i, pos]
                prev = w
            rows.append(word)
        return rows

    def stack(self, units: list, num_labels: int):
        return list(units)

    def tags(self, logits, labels: list[str]) -> list[list[int]]:
        """Each sentence's tag ids: the most probable valid IOB2 sequence, so every reader (validation, evaluation,
        prediction, the monitor) sees whole spans of one type."""
        return [viterbi_tags(l, labels) for l in logits]

    def decode(self, logits, labels: list[str], tags: list[list[int]] | None = None) -> tuple[list[str], list[float]]:
        """Tag strings, and each sentence's confidence: the mean probability of its words' chosen tags."""
        tags = self.tags(logits, labels) if tags is None else tags
        probs = [l.softmax(-1) for l in logits]
        return ([" ".join(labels[j] for j in t) for t in tags],
                [float(p[range(len(t)), t].mean()) if len(p) else 1.0 for p, t in zip(probs, tags)])

    # --- metrics -------------------------------------------------------------------------------------
    def subset(self, logits, idx: list[int]):
        return [logits[i] for i in idx]

    def validation_score(self, logits, targets: list, labels: list[str], loss_fn) -> dict[str, float]:
        import torch

        from lmops.metrics import seqeval_scores

        flat = torch.cat(logits) if logits else torch.zeros((0, len(labels)))
        gold = [t for tags in targets for t in tags]
        val_loss = float(loss_fn(flat, torch.as_tensor(gold, dtype=torch.long))) if gold else float("nan")
        scores = seqeval_scores(targets, self.tags(logits, labels), labels)
        # early stopping on entity-level micro F1, the usual NER headline: rare types make macro noisy
        return {"val_loss": val_loss, "macro": scores["macro_f1"], "select": scores["micro_f1"], "entity_f1": scores["micro_f1"]}

    def report(self, logits, refs: list, labels: list[str]) -> tuple[dict[str, Any], list[str], list[float], Any]:
        import torch
        from sklearn.metrics import confusion_matrix

        from lmops.metrics import calibration, seqeval_scores

        preds = self.tags(logits, labels)
        report = seqeval_scores(refs, preds, labels)
        flat_probs = torch.cat(logits).softmax(-1) if logits else torch.zeros((0, len(labels)))
        flat_refs = [t for r in refs for t in r]
        report["confusion_matrix"] = confusion_matrix(flat_refs, [t for p in preds for t in p], labels=list(range(len(labels)))).tolist()
        report["calibration"] = calibration(flat_probs, flat_refs)  # per word, of the softmax itself

        def score(idx):
            return seqeval_scores([refs[i] for i in idx], [preds[i] for i in idx], labels)

        text, confidence = self.decode(logits, labels, preds)
        return report, text, confidence, score

    class_noun = "entity type"
    casing_feature = True
    pools = False  # one tag per word: no sentence vector to pool
    calibrated = False  # per-word softmaxes: not temperature-scaled here (the confidence is a mean over words)
    resampled = "sentences"  # whole, so the spans inside one stay together
    text_inputs = False  # an input is a list of words
    confusion_title = "Tag-level confusion matrix"

    def report_headline(self, report: dict[str, Any], n: int) -> str:
        return (f"entity-level (seqeval, exact spans): micro-F1 **{report['micro_f1']:.4f}** · macro-F1 **{report['macro_f1']:.4f}** · "
                f"token accuracy {report['accuracy']:.4f} · sentences = {n}")

    def interval(self, refs_text, preds, labels, seed: int) -> dict[str, list[float]]:
        """Entity micro-F1 over resampled sentences: the paired bootstrap against a tagger that finds no entity,
        whose micro-F1 is 0 in every resample, so each draw's difference is this tagger's own score."""
        none = [" ".join("O" for _ in r.split()) for r in refs_text]
        d = self.paired_bootstrap(refs_text, none, preds, labels, seed)
        return {"micro_f1": d["micro_f1"]["ci95"]}

    def paired_bootstrap(self, refs_text, preds_a, preds_b, labels, seed: int) -> dict[str, Any]:
        """Tag sequences: resample sentences, score entity spans."""
        from lmops.metrics import bootstrap_diff_entities

        return bootstrap_diff_entities([x.split() for x in refs_text], [x.split() for x in preds_a], [x.split() for x in preds_b], n=1000, seed=seed)

    def paired_bootstrap_runs(self, refs_text, runs_a, runs_b, labels, seed: int) -> dict[str, Any]:
        if len(runs_a) > 1 or len(runs_b) > 1:
            from lmops.errors import UserError

            raise UserError("several runs per side are compared for sentence and entity tasks; for NER, compare one model with another")
        return self.paired_bootstrap(refs_text, runs_a[0], runs_b[0], labels, seed)


def _subtoken_counts(tokenizer, inputs: list) -> list[list[int]]:
    """Sub-tokens per word, per sentence (without specials)."""
    enc = tokenizer(inputs, is_split_into_words=True, add_special_tokens=False, truncation=False)
    out = []
    for i, words in enumerate(inputs):
        counts = [0] * len(words)
        for w in enc.word_ids(i):
            if w is not None:
                counts[w] += 1
        out.append(counts)
    return out


def _context(j: int, a: int, b: int, n: int) -> int:
    """Words between word j and the nearer cut of window [a, b) of an n-word sentence (its own ends are not cuts)."""
    return min(j - a if a > 0 else n, b - 1 - j if b < n else n)


def word_windows(counts: list[int], budget: int, overlap: int, can_cut: list[bool] | None = None) -> list[tuple[int, int]]:
    """Word ranges [a, b) covering a sentence whose words have ``counts`` sub-tokens: each holds at most ``budget``
    sub-tokens (a single longer word is a window alone, truncated), the next starts about ``overlap`` sub-tokens
    before the previous one ends, and a window ends before word j only where ``can_cut[j]`` (not inside an entity)
    unless no such place is left in it."""
    n = len(counts)
    if sum(counts) <= budget:
        return [(0, n)]
    spans, a = [], 0
    while True:
        b, used = a, 0
        while b < n and (b == a or used + counts[b] <= budget):
            used += counts[b]
            b += 1
        if b < n and can_cut is not None and not can_cut[b]:
            back = next((j for j in range(b - 1, a, -1) if can_cut[j]), None)
            b = back if back is not None else b
        spans.append((a, b))
        if b >= n:
            return spans
        nxt, repeated = b, 0
        while nxt - 1 > a and repeated + counts[nxt - 1] <= overlap:
            nxt -= 1
            repeated += counts[nxt]
        a = nxt


def align_tags(enc, tag_ids: list[list[int]]):
    """Sub-token labels: a word's tag on its first sub-token, -100 (ignored) on the rest and on specials."""
    import torch

    out = torch.full(enc["input_ids"].shape, -100, dtype=torch.long)
    for i, tags in enumerate(tag_ids):
        prev = None
        for pos, w in enumerate(enc.word_ids(i)):
            if w is not None and w != prev:
                out[i, pos] = tags[w]
            prev = w
    return out


def _capitalised(word: str) -> bool:
    """Its first letter is upper case ("Apple", "NYSE", "$AAPL"; not "iPhone", "10-K")."""
    return next((c for c in word if c.isalpha()), "").isupper()


@functools.lru_cache(maxsize=8)
def _barrier(labels: tuple[str, ...]):
    """0 where IOB2 lets tag ``from`` be followed by ``to``, -inf where not; and the log-weight of opening with each tag."""
    import numpy as np

    allowed, opens = iob2_transitions(list(labels))
    return np.where(allowed, 0.0, -np.inf), np.where(opens, 0.0, -np.inf)


def iob2_transitions(labels: list[str]):
    """Which tag may follow which in IOB2, as a (from, to) boolean matrix, and which may open a sentence:
    ``I-X`` only after ``B-X`` or ``I-X``; every other tag anywhere."""
    import numpy as np

    inside = [l[2:] if l.startswith("I-") else None for l in labels]
    allowed = np.ones((len(labels), len(labels)), dtype=bool)
    for j, kind in enumerate(inside):
        if kind is not None:
            allowed[:, j] = [l in (f"B-{kind}", f"I-{kind}") for l in labels]
    return allowed, np.array([k is None for k in inside])


def viterbi_tags(logits, labels: list[str]) -> list[int]:
    """The tag sequence of highest probability (sum of per-word log-softmax) among those that are valid IOB2.
    A per-word argmax can open a span with ``I-X`` or switch type inside one ("B-ORG I-ORG I-LOC"), which seqeval
    reads as extra, wrong spans; here every span is whole and of one type. Equal to the argmax wherever that is valid."""
    import numpy as np

    scores = np.asarray(logits.log_softmax(-1), dtype=np.float64)
    if len(scores) == 0:
        return []
    barrier, opening = _barrier(tuple(labels))
    best = scores[0] + opening
    back = np.zeros((len(scores), len(labels)), dtype=np.int64)
    for t in range(1, len(scores)):
        step = best[:, None] + barrier  # [from, to]
        back[t] = step.argmax(0)
        best = step.max(0) + scores[t]
    path = [int(best.argmax())]
    for t in range(len(scores) - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1]
