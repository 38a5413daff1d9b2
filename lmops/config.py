"""params.yaml → typed pydantic models. Every stage reads its own section; no stage reads YAML.

Unknown keys fail at once with their dotted path (``extra="forbid"``); all problems are reported in
one message. Overrides: ``lmops run --params FILE pretrain.max_steps=50 finetune.method=full``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmops.errors import ConfigError

LABELS_DEFAULT = ["negative", "neutral", "positive"]


def raw_label(value: Any) -> str | None:
    """A raw label as the string label_map keys are written in (Parquet/JSON ints and strings alike). An integer
    column with a missing value loads as floats: 1.0 is the label "1", NaN is no label."""
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value.is_integer():
            return str(int(value))
    return str(value)


def _map_key(value: Any) -> Any:
    # YAML reads {0: negative}'s key as the integer 0; the column's raw label is "0" (a boolean key stays an error)
    return raw_label(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# raw label → a validate.labels name
LabelMap = dict[Annotated[str, BeforeValidator(_map_key)], str]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ProjectParams(Section):
    seed: int = 42


class SourceParams(Section):
    """One input. ``role`` says what it feeds; ``format`` picks the adapter."""

    name: str
    role: Literal["labeled", "unlabeled"]
    # csv also reads .tsv and .gz; text_lines = one document per line; hf = a Hugging Face datasets id
    # conll = token-per-line NER files (token ... tag; IO/IOB1 tags become IOB2)
    format: Literal["sentfin", "csv", "jsonl", "parquet", "text_dir", "text_lines", "fomc", "hf", "conll"]
    path: str
    text_column: str = "text"
    # Several text fields joined as one document (e.g. a 10-K's item1, item1a, item7); overrides text_column.
    text_columns: list[str] | None = None
    split: str = "train"  # hf only
    label_column: str | None = "label"
    # Raw label value (as a string) → canonical label name, e.g. {"0": negative, "bearish": negative}.
    label_map: LabelMap = Field(default_factory=dict)
    max_rows: int | None = Field(default=None, ge=1)
    # Put every row of this labeled source in one split (e.g. a published test file); the other
    # labeled sources are then split without that part.
    assign_split: Literal["train", "validation", "test"] | None = None
    # Split this source's rows among themselves (same fractions and seed): an arrived batch gets train, validation
    # and test rows of its own, and adding it never moves another source's rows between splits.
    split_alone: bool = False
    # Decode HTML character references (&amp; → &, &lt; → <, &#39; → '): text exported from web pages or the
    # Twitter API arrives escaped, and left so it counts as markup in validation and reads as "amp" to a tokenizer.
    unescape_html: bool = False
    # A SEntFiN headline whose entities disagree ("A up, B down") has no headline label: quarantine it, or keep it
    # as an auxiliary row (the snapshot's auxiliary.parquet, train-only) whose entity labels finetune.entity_auxiliary
    # trains on. Sentence-classification tasks only; other kinds read every entity label already.
    mixed_entities: Literal["quarantine", "auxiliary"] = "quarantine"

    @model_validator(mode="after")
    def _labeled_needs_label(self) -> "SourceParams":
        if self.role == "labeled" and self.format in {"csv", "jsonl"} and not self.label_column:
            raise ValueError(f"source {self.name!r}: a labeled {self.format} source needs label_column")
        if self.mixed_entities == "auxiliary" and (self.role != "labeled" or self.format != "sentfin"):
            raise ValueError(f"source {self.name!r}: mixed_entities: auxiliary keeps SEntFiN headlines with mixed entity labels; "
                             "it needs role: labeled and format: sentfin")
        return self


class BoilerplateParams(Section):
    """Page furniture removed from unlabeled documents line by line, before normalization joins lines (see
    ``lmops.text.Boilerplate``). The default patterns are what EDGAR's HTML-to-text leaves in 10-K items."""

    # a line that matches one of these whole (after trimming) is removed; bounded repeats ({0,40}, not *) give each
    # pattern a longest match, and the line kernel then skips every longer line without calling the regex
    line_patterns: list[str] = Field(default_factory=lambda: [
        r"(?i)(?:table of cont\w{0,40}|of contents)", r"(?i)index to (?:consolidated )?financial statements",
        r"(?i)(?:page\s{0,10})?[-–—]?\s{0,10}\d{1,4}\s{0,10}[-–—]?", r"(?i)page \d{1,6} of \d{1,6}",
    ])
    # a line of at most repeated_line_max_chars with a letter in it, seen this often in one document next to a
    # page-break line (one of line_patterns), is a running header or footer ("2023 FORM 10-K"); 0 = off
    repeated_line_min: int = Field(default=3, ge=0)
    repeated_line_max_chars: int = Field(default=80, ge=1)

    @field_validator("line_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        import re

        bad = []
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                bad.append(f"[{i}] {pattern!r}: {exc}")
        if bad:
            raise ValueError("not a regular expression: " + "; ".join(bad))
        return patterns


class EngineParams(Section):
    """Where ingest's per-batch work (cleaning, chunking, signatures) runs, and the pieces of a corpus validated in
    pieces (``validate.corpus_batch_rows``); see ``lmops/tasks/engine.py``."""

    # local = this process; dask = a Dask cluster: a LocalCluster of `workers` processes, or the scheduler at `address`
    kind: Literal["local", "dask"] = "local"
    workers: int = Field(default=2, ge=1)
    address: str | None = None  # e.g. tcp://dask-scheduler:8786 (kind: dask)
    connect_timeout_s: float = Field(default=30, gt=0)
    worker_memory: str = "2GiB"  # per LocalCluster worker (Dask spills, then pauses, past it)
    in_flight_per_worker: int = Field(default=2, ge=1)  # batches queued per worker: bounds the driver's memory
    # local: threads cleaning batches at once (0 = one per core); the text kernels release the GIL as they scan
    threads: int = Field(default=0, ge=0)


class IngestParams(Section):
    sources: list[SourceParams]
    boilerplate: BoilerplateParams = Field(default_factory=BoilerplateParams)
    engine: EngineParams = Field(default_factory=EngineParams)
    # records per unit of work, and characters: a batch closes at whichever comes first (memory is bounded by
    # batch_chars times the batches in flight, however large the sources)
    batch_rows: int = Field(default=2000, ge=1)
    batch_chars: int = Field(default=4_000_000, ge=1000)
    # characters of cleaned batches kept in memory between the two passes (local engine) before the rest spill to
    # disk: a corpus this small is never written twice; 0 spills every batch
    hold_chars: int = Field(default=32_000_000, ge=0)

    # where and in what pieces the work runs, not what it produces: kept out of cache keys and the model hash
    RUNTIME_ONLY: ClassVar[frozenset[str]] = frozenset({"engine", "batch_rows", "batch_chars", "hold_chars"})

    def content(self) -> dict[str, Any]:
        """The params that decide ingest's output."""
        return self.model_dump(mode="json", exclude=set(self.RUNTIME_ONLY))
    min_chars: int = Field(default=8, ge=1)
    max_chars: int = Field(default=20000, ge=16)
    # Long unlabeled documents are split on paragraph/sentence boundaries into chunks of ~this size.
    chunk_chars: int = Field(default=2000, ge=64)
    # Near-duplicate documents (MinHash Jaccard estimate over word 5-grams) within a role are counted, not kept.
    near_duplicate_threshold: float | None = Field(default=0.9, gt=0, le=1)
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    # Which rows become validation and test; null = project.seed. Fix it when training seeds are compared or
    # ensembled: with the split following the training seed, every model is scored on rows the others trained on
    # (three seeds' test splits of SEntFiN shared ~80% of their rows with each other's training rows).
    split_seed: int | None = None

    def seed_for_split(self, project_seed: int) -> int:
        return project_seed if self.split_seed is None else self.split_seed

    @model_validator(mode="after")
    def _roles(self) -> "IngestParams":
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"ingest.sources names must be unique, got {names}")
        return self


class ValidateParams(Section):
    labels: list[str] = Field(default_factory=lambda: list(LABELS_DEFAULT))
    # a corpus with more rows is validated this many rows at a time (GX batches combined over all rows)
    corpus_batch_rows: int = Field(default=500_000, ge=1)
    min_labeled_rows: int = 30
    max_labeled_rows: int = 10_000_000
    min_corpus_rows: int = 5
    max_corpus_rows: int = 100_000_000
    text_min_chars: int = 8
    text_max_chars: int = 20000
    # Share of rows that must satisfy a per-row expectation (GX ``mostly``).
    mostly: float = Field(default=1.0, gt=0, le=1)
    # Label distribution vs the previous data version (data/summary.json): KL divergence bound; null = off.
    max_label_drift_kl: float | None = Field(default=0.1, gt=0)
    # Share of texts that may contain HTML/XML markup (tags, entities) or match a boilerplate pattern.
    max_markup_share: float = Field(default=0.02, ge=0, le=1)
    max_boilerplate_share: float = Field(default=0.05, ge=0, le=1)
    # Share of a source's rows that ingest may quarantine before the snapshot is refused: a wrong column, label
    # spelling or encoding quarantines a whole source, and training on the rest would pass unnoticed.
    max_quarantine_share: float = Field(default=0.5, ge=0, le=1)
    # ASCII classes ([0-9], not \d or \b), which pandas hands to Arrow's RE2: a Unicode-aware class on non-ASCII text
    # makes it fall back to Python's re, one row at a time (on the 10-K corpus 0.4 s of GX's 0.8 s, BENCHMARKS.md)
    boilerplate_patterns: list[str] = Field(default_factory=lambda: [
        r"(?i)table of contents", r"(?i)(?:^|[^0-9a-z_])page [0-9]+ of [0-9]+(?:[^0-9a-z_]|\Z)", r"(?i)all rights reserved", r"(?i)click here",
        r"(?i)this page intentionally left blank", r"(?i)subscribe to our newsletter", r"(?i)cookie (?:policy|settings)",
    ])


class TokenizeParams(Section):
    kind: Literal["wordpiece", "bpe"] = "wordpiece"
    vocab_size: int = Field(default=4000, ge=100)
    lowercase: bool = True
    block_size: int = Field(default=64, ge=8)
    # Reuse the base model's tokenizer when pretrain.base_model is set.
    reuse_base: bool = True
    # true = concatenate documents and cut equal blocks (no padding); false = line by line: one
    # document per block, truncated and padded (for comparison; attention masks the padding)
    packing: bool = True
    # rows per datasets.map batch: tokenization streams through Arrow files on disk in batches of this size,
    # so a corpus larger than RAM is tokenized without loading it
    map_batch_size: int = Field(default=1000, ge=1)
    # processes for the datasets.map that turns texts into token ids (the same ids whatever the number); null =
    # one per 5,000 corpus rows up to the cores (2 processes tokenized the 10-K corpus 1.7x faster; a small corpus
    # does not repay starting them: BENCHMARKS.md)
    num_proc: int | None = Field(default=None, ge=1)
    # Size bound of the tokenization caches ($LMOPS_HOME/cache/tokenize): after each run the least recently
    # used entries (results, token ids, Arrow copies of corpora) are removed down to this; null = unbounded.
    # The current run's entries are always kept.
    cache_max_gb: float | None = Field(default=20.0, ge=0)


class PretrainParams(Section):
    # false = skip tokenize+pretrain and fine-tune finetune.base_model directly
    enabled: bool = True
    objective: Literal["mlm", "clm"] = "mlm"
    base_model: str | None = None  # hub id or local path; None = from config below
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 128
    max_steps: int = Field(default=100, ge=1)
    batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = 0.01
    warmup_steps: int = Field(default=10, ge=0)
    mlm_probability: float = Field(default=0.15, gt=0, lt=1)
    eval_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    log_every: int = Field(default=10, ge=1)
    # steps between held-out evaluations during training (0 = only at the end); a multiple of log_every
    eval_every: int = Field(default=0, ge=0)
    time_budget_s: float | None = None
    whole_word_masking: bool = False  # mask every sub-token of a chosen word (WordPiece "##" / byte-level "Ġ")
    checkpoint_every: int = Field(default=100, ge=0)  # steps between atomic checkpoints (0 = none)
    keep_checkpoints: int = Field(default=2, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto = bf16 autocast on a GPU that has it, else fp32
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    compile: bool = False  # torch.compile the model (GPU; slow to start)
    # torch.compile mode; max-autotune* benchmarks matmul/kernel configs at start-up (minutes) for a faster step
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # SDPA kernel: auto = PyTorch's choice; flash / cudnn (fast on Hopper) / efficient / math force one
    sdpa_backend: Literal["auto", "flash", "cudnn", "efficient", "math"] = "auto"
    # Override every dropout rate of the model (None = the architecture's own, 0.1 for BERT and GPT-2).
    # Modern pretraining recipes (nanoGPT, MPT) use 0: more signal per step and no RNG work on the GPU.
    dropout: float | None = Field(default=None, ge=0, lt=1)
    gradient_checkpointing: bool = False
    # Under torchrun: ddp = replicate the model; fsdp = shard parameters, gradients and optimizer state
    # over the processes (FSDP2 ``fully_shard`` per transformer block), for models that do not fit one GPU
    distributed: Literal["ddp", "fsdp"] = "ddp"
    # MLM: run the vocabulary head only on the ~15% masked positions (as MosaicBERT/llm-foundry do);
    # HF's BertForMaskedLM scores every position. Same loss, fewer FLOPs.
    sparse_mlm_head: bool = True
    # A base checkpoint that ships no head for the objective (sentence-transformers models such as all-MiniLM-L6-v2:
    # the encoder only) gets one from transformers' random init. prior: its output bias starts at the log unigram
    # frequency of the training tokens, so the head first predicts the corpus's token mix (MiniLM on FOMC text: initial
    # masked-token loss 6.9 instead of 10.8; uniform would be 10.3); random: transformers' init as is.
    head_init: Literal["prior", "random"] = "prior"
    # round a from-config model's vocabulary up (64 suits tensor cores: GPT-2's 50257 -> 50304, as nanoGPT does)
    pad_vocab_to_multiple: int = Field(default=1, ge=1)
    peak_flops: float | None = None  # per-device peak FLOP/s for MFU; known GPUs are detected
    # > 0: profile that many steps after warm-up (torch.profiler); writes profile.txt (top kernels by
    # device time) and a Chrome/Perfetto trace.json next to the model
    profile_steps: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> "PretrainParams":
        if self.base_model is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"pretrain.hidden_size ({self.hidden_size}) must be divisible by pretrain.num_heads ({self.num_heads})"
            )
        if self.eval_every % self.log_every:
            raise ValueError(f"pretrain.eval_every ({self.eval_every}) must be a multiple of pretrain.log_every ({self.log_every})")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"pretrain.compile_mode ({self.compile_mode}) needs pretrain.compile: true")
        if self.sdpa_backend != "auto" and self.attn_implementation != "sdpa":
            raise ValueError(f"pretrain.sdpa_backend ({self.sdpa_backend}) needs pretrain.attn_implementation: sdpa")
        return self


class LoraParams(Section):
    r: int = Field(default=8, ge=1)
    alpha: int = 16
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | None = None  # None = chosen per architecture


class SamplingParams(Section):
    """How often each labeled source is drawn while fine-tuning on several (tasks/finetune.py SourceSampler)."""

    # p(a training row comes from source s) ∝ weights[s] · rows(s)^alpha: 1 = in proportion to its rows (a plain
    # shuffle), 0 = every source equally often, between = the small sources seen more, the big ones less
    alpha: float = Field(default=1.0, ge=0, le=1)
    weights: dict[str, float] = Field(default_factory=dict)  # an extra factor per source name (default 1; 0 = not trained on)

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, w in value.items() if not w >= 0)
        if bad:
            raise ValueError(f"weights must be >= 0 (sources {bad})")
        return value


class AveragingParams(Section):
    """Weight averaging while fine-tuning (tasks/averaging.py): an exponential moving average of the trainable
    weights, scored on validation beside the trained weights after every epoch; ``choose`` says which is kept."""

    # ema: flat regions of the loss generalise better than the point the last steps ended in (SWA, SWAD); the
    # average costs no inference and one extra validation pass per epoch
    method: Literal["none", "ema"] = "none"
    # how far back the average reaches, in epochs (its decay is 1 - 1 / (horizon_epochs · steps per epoch)), so one
    # setting means the same on a 1,000-row and a 100,000-row training set
    horizon_epochs: float = Field(default=0.5, gt=0)
    # better: each epoch's candidate is whichever of the trained and the averaged weights scores higher on validation;
    # averaged: always the average (SWA's use: the trained weights only move the average)
    choose: Literal["better", "averaged"] = "better"


class FinetuneParams(Section):
    # sequence = one label per text; entity = one label per (text, entity) pair (SEntFiN's entity
    # sentiments); token = one tag per word (NER from CoNLL sources; validate.labels lists the IOB2 tags)
    # a name in lmops.kinds.KINDS
    task: str = "sequence"
    # full = all weights; lora / ia3 = PEFT adapters merged into the saved model; prompt / prefix =
    # soft-prompt PEFT, saved as an adapter that references its base model
    method: Literal["lora", "full", "ia3", "prompt", "prefix"] = "lora"
    virtual_tokens: int = Field(default=20, ge=1)  # prompt / prefix tuning
    # None = the pretrain stage's output; else any hub id or local path.
    base_model: str | None = None
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = 0.01
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=64, ge=8)
    class_weighting: bool = True
    # regularisers of the fine-tuning recipe: the training targets mix this share of the uniform distribution
    # (validation loss and selection stay on the plain targets); each encoder layer below the top one learns at this
    # factor of the one above it (the embeddings one step below the first layer, the head at finetune.lr)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    layer_lr_decay: float = Field(default=1.0, gt=0, le=1)
    patience: int = Field(default=2, ge=1)
    # batch texts of similar length in word pieces together (sorted within windows of 50 batches, the batches
    # shuffled): far less padding when lengths vary a lot (NER sentences, headlines beside tweets: 1.6x the steps
    # per second on both sentiment sources, BENCHMARKS.md); off = plain shuffling. Token kinds group by words.
    group_by_length: bool = False
    # fit a calibrator on the validation split after training and save it with the model, so reported and served
    # confidences match how often the model is right (tasks/calibration.py): temperature = one scalar; isotonic =
    # the temperature, then a monotone map of the top-label confidence (fixes a shape a scalar cannot: over-confident
    # at the top, under-confident in the middle); none = raw softmax
    calibration: Literal["temperature", "isotonic", "none"] = "temperature"
    lora: LoraParams = Field(default_factory=LoraParams)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    averaging: AveragingParams = Field(default_factory=AveragingParams)
    # the early-stopping score when the validation split holds several sources: pooled = over all its rows;
    # source_mean = the mean of each source's score; worst_source = the lowest one (no source may be given up)
    select_on: Literal["pooled", "source_mean", "worst_source"] = "pooled"
    # token_type = tell the model which words start with a capital letter through its token-type (segment)
    # embeddings: an uncased base (all-MiniLM-L6-v2) lowercases "Apple" and "apple" alike, and capitals are the
    # strongest cue for names. Saved in the model's config, so every reader of the model encodes the same way.
    # Tasks that read words (token); none = the tokenizer's own encoding
    casing: Literal["none", "token_type"] = "none"
    # entity labels as an auxiliary signal for a sentence classifier: each (entity, headline) pair becomes a training
    # row "entity [SEP] headline" with the entity's label, beside the headline rows (never in validation). mixed = the
    # pairs of the auxiliary rows only (headlines whose entities disagree: ingest.sources[].mixed_entities: auxiliary),
    # all = also the pairs of every training headline; none = headlines only. The pairs' source is "<source>:entities",
    # so finetune.sampling.weights sets their share of the draws.
    entity_auxiliary: Literal["none", "mixed", "all"] = "none"
    # how a sentence classifier reads its token states (tasks/pooling.py): cls = the architecture's own head (BERT:
    # the first token through the pooler); mean = the mean over the real tokens, what sentence-transformers bases
    # (all-MiniLM-L6-v2) were trained to produce. Saved in the model's config; sentence tasks, full/lora/ia3
    pooling: Literal["cls", "mean"] = "cls"
    # LP-FT (tasks/probe.py): fit the sentence head on the base's frozen features (a logistic regression, its L2
    # strength chosen on validation) before fine-tuning everything, so the first steps do not distort the features
    # through a random head
    linear_probe: bool = False
    # the seed of the weights the base does not have (the new head), apart from project.seed (dropout, the order of
    # the rows): runs of several seeds with one init_seed start from the same model, so that their weights can be
    # averaged into one (a soup) without averaging unrelated heads. null = project.seed, as before
    init_seed: int | None = None
    # entity-targeted sentiment (task: entity): the target entity's mentions in the headline wrapped in this marker
    # ("Gold shines; * Silver * dull" for the pair about Silver), so the model need not find the entity the pair
    # names by matching it; saved in the model's config, read by every encoder of its inputs. "" = off
    entity_marker: str = ""
    # keep the word-embedding table as pretrained (method full): words the labeled data never shows keep their place
    # among the words it does, which training would otherwise move away from them
    freeze_embeddings: bool = False
    # share of each training batch's word pieces (not [CLS]/[SEP]/padding) replaced by the tokenizer's mask token,
    # drawn anew every step (seeded): the model cannot lean on any one word, as text from another source often
    # lacks the words it learned (cashtags, links, slang); validation and prediction read every token
    token_mask: float = Field(default=0.0, ge=0, lt=1)
    # R-Drop (Liang et al., 2021): every batch goes through the model twice, under two dropout draws, and the loss adds
    # this weight times the symmetric KL divergence between the two predictions (averaged over what the loss scores)
    # to the mean of their cross-entropies: the sub-models dropout samples must agree, so the one served (no dropout)
    # is closer to what training fitted. Twice the training compute; 0 = off
    rdrop: float = Field(default=0.0, ge=0)
    # WiSE-FT after training (method full): the encoder's weights moved back towards the base's,
    # alpha · trained + (1 − alpha) · base, the head as trained, for each alpha listed; the weights with the best
    # validation score are kept, the trained ones on a tie. [] = off. Measured at 0.8 on three seeds: +0.2 / +0.5 / +0.5 on
    # unseen tweets, within what a seed moves them (BENCHMARKS.md, "WiSE-FT")
    interpolate: list[Annotated[float, Field(ge=0, lt=1)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _casing_needs_words(self) -> "FinetuneParams":
        if self.casing != "none" and not self.kind.casing_feature:
            raise ValueError(f"finetune.casing: {self.casing} marks capitalised words, which task {self.task!r} does not read "
                             "one by one; use it with task: token, or set finetune.casing: none")
        if self.entity_auxiliary != "none" and not self.kind.entity_auxiliary:
            raise ValueError(f"finetune.entity_auxiliary: {self.entity_auxiliary} adds entity-labelled pairs to a sentence classifier; "
                             f"task {self.task!r} cannot train on them: set finetune.entity_auxiliary: none")
        if self.pooling != "cls" and not self.kind.pools:
            raise ValueError(f"finetune.pooling: {self.pooling} makes one vector of a sentence; task {self.task!r} labels each word: "
                             "set finetune.pooling: cls")
        if self.entity_marker and not self.kind.entity_marking:
            raise ValueError(f"finetune.entity_marker marks the target entity of an (entity, text) pair; task {self.task!r} has no target "
                             'entity: set finetune.entity_marker: ""')
        if self.entity_marker and (self.entity_marker != self.entity_marker.strip() or any(c.isspace() for c in self.entity_marker)):
            raise ValueError(f"finetune.entity_marker: {self.entity_marker!r} must be a short string without whitespace, e.g. '*'")
        if self.linear_probe and not self.kind.pools:
            raise ValueError(f"finetune.linear_probe fits a head over one vector per sentence; task {self.task!r} labels each word: "
                             "set finetune.linear_probe: false")
        if self.freeze_embeddings and self.method != "full":
            raise ValueError(f"finetune.freeze_embeddings keeps a full fine-tune's word embeddings as pretrained; method {self.method} "
                             "trains none of them anyway: set finetune.freeze_embeddings: false")
        if self.interpolate and self.method != "full":
            raise ValueError(f"finetune.interpolate mixes a full fine-tune's weights with its base's; method {self.method} leaves "
                             "the base as it was: set finetune.interpolate: []")
        if self.pooling != "cls" and self.method in {"prompt", "prefix"}:
            raise ValueError(f"finetune.pooling: {self.pooling} reads the encoder's states, which soft prompts ({self.method}) extend: "
                             "use method full, lora or ia3, or set finetune.pooling: cls")
        return self

    @field_validator("task")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        from lmops.kinds import KINDS

        if value not in KINDS:
            raise ValueError(f"unknown task kind; choose one of {sorted(KINDS)}")
        return value

    @property
    def kind(self):
        """The task kind object (lmops.kinds) that ``task`` names."""
        from lmops.kinds import get_kind

        return get_kind(self.task)


class DistillParams(Section):
    """Teachers (an ensemble when several) taught to a student with fewer layers (tasks/distill.py): `lmops distill`,
    or in the pipeline with `enabled`."""

    # in `lmops run`: the fine-tuned model (plus `teachers`) teaches a student, and the student is the candidate the
    # gate judges and the registry records; the teacher stays in the run folder
    enabled: bool = False
    # more teachers for the pipeline's ensemble: model folders, pkg: references or registry NAME@ALIAS|@VERSION
    teachers: list[str] = Field(default_factory=list)
    # encoder layers of the first teacher the student keeps, in order; null = every other one (0, 2, 4 of 6)
    layers: list[int] | None = None
    alpha: float = Field(default=0.7, ge=0, le=1)  # weight of the teachers' soft labels; the rest is the gold labels'
    temperature: float = Field(default=2.0, gt=0)  # softens both sides of the KL term (scaled back by T²)
    # texts of the pretraining corpus added with the teachers' labels alone (sequence tasks; 0 = labeled rows only)
    unlabeled_rows: int = Field(default=0, ge=0)
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-4, gt=0)


class SoupParams(Section):
    """Fine-tuned models of one starting point averaged weight by weight into one model (tasks/soup.py, Wortsman et
    al. 2022): `lmops soup`, or in the pipeline with `enabled`. The monitor pays for one model; session 24 measured
    that a soup of three seeds kept the out-of-source gain their ensemble bought (BENCHMARKS.md)."""

    # in `lmops run`: the fine-tune stage is run once more for each of `seeds` (same data, same finetune params,
    # another project.seed), and the average of those models (plus `members`) is the candidate the gate judges and
    # the registry records; the members stay in the run folder. Needs finetune.init_seed, so they share their head
    enabled: bool = False
    # more training seeds beside project.seed (the pipeline's first member)
    seeds: list[int] = Field(default_factory=list)
    # more members: model folders, pkg: references or registry NAME@ALIAS|@VERSION, started from the same weights
    members: list[str] = Field(default_factory=list)
    # uniform = every member's weights averaged; greedy = members in order of their validation score, each kept only
    # if the soup's validation score does not drop with it (Wortsman et al.'s greedy soup)
    method: Literal["uniform", "greedy"] = "uniform"

    @model_validator(mode="after")
    def _distinct(self) -> "SoupParams":
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"soup.seeds {self.seeds} repeats a seed: a member trained twice with one seed is the same model twice")
        return self


class LabeledFileParams(Section):
    """How a user's labeled file is read (its format, columns and label names), beside the ingest sources."""

    format: Literal["csv", "jsonl", "parquet", "sentfin", "conll"] | None = None  # None = from the file's suffix
    text_column: str = "text"
    label_column: str = "label"
    label_map: LabelMap = Field(default_factory=dict)  # raw label → a validate.labels name, as for sources

    def file_columns(self) -> dict:
        return self.model_dump(include=set(LabeledFileParams.model_fields))


class EvaluateParams(LabeledFileParams):
    # The file fields read `lmops evaluate/compare --data FILE`, e.g. evaluate.text_column=sentence
    # 'evaluate.label_map={Positive: positive, Negative: negative}'
    batch_size: int = 64
    # Tokens read per input when a model is scored (evaluation, the gate, compare): null = as the model was trained
    # (the finetune.max_length saved with it; params' finetune.max_length for a model saved before that was recorded).
    max_length: int | None = Field(default=None, ge=8)


class GateSetParams(LabeledFileParams):
    """A named evaluation set the gate scores the candidate and the champion on, besides the test split: typically
    an out-of-source canary (another source's labeled slice that is never trained on), so a model that gains in
    source by losing elsewhere is not promoted. Read with the ingest rules; rows also in this run's training or
    validation data are left out (and counted)."""

    path: str  # relative to the project root
    min_score: float = Field(default=0.0, ge=0, le=1)  # floor on gate.primary_metric here
    # The candidate may score at most this much below the champion here (0 = no regression at all); null = floor only.
    max_drop: float | None = Field(default=0.0, ge=0)


class GateParams(Section):
    min_accuracy: float = Field(default=0.0, ge=0, le=1)
    min_macro_f1: float = Field(default=0.0, ge=0, le=1)
    # micro_f1 is the usual NER headline (entity-level, seqeval)
    primary_metric: Literal["macro_f1", "accuracy", "micro_f1"] = "macro_f1"
    # The candidate must beat the champion's score on the same test split by at least this much.
    margin: float = 0.0
    # Promote only when the paired-bootstrap 95% interval of (candidate − champion) on the test split lies above 0:
    # a difference the test split cannot tell from noise does not move the champion.
    require_significant: bool = False
    sets: dict[str, GateSetParams] = Field(default_factory=dict)  # named out-of-source evaluation sets
    # When the test split holds several sources (configs/all-sources.yaml), the candidate may score at most this much
    # below the champion on each source's own rows: a gain on one source never pays for a loss on another. null = off
    # (each source is still scored and listed in the decision).
    source_max_drop: float | None = Field(default=None, ge=0)


class RegisterParams(Section):
    model_name: str = "finance-sentiment"
    experiment: str = "lmops"
    # One training run per model name at a time (on this machine; with a Prefect server, across machines): a
    # second run waits this long for the first, then fails as transient with the reason in its log.
    wait_for_other_run_s: float = Field(default=6 * 3600, ge=0)


class ScheduleParams(Section):
    """When ``lmops serve`` runs the pipeline unattended (a Prefect cron schedule)."""

    cron: str = "0 2 * * *"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        import re

        # the shape only (Prefect validates the values when it schedules): five fields, or an @alias
        if not (re.fullmatch(r"@(yearly|annually|monthly|weekly|daily|hourly)", v.strip())
                or re.fullmatch(r"[\w*/,?#-]+(\s+[\w*/,?#-]+){4}", v.strip())):
            raise ValueError(f"{v!r} is not a cron expression (minute hour day month weekday, e.g. '0 2 * * *')")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone (e.g. UTC, Europe/London, America/New_York)") from None
        return v


class NotifyParams(Section):
    """Who hears about a run: every event is also a Prefect event (``lmops.*``, for automations); with
    ``webhook_url`` it is POSTed there as JSON (a chat incoming webhook, an alerting endpoint)."""

    webhook_url: str | None = None
    events: list[Literal["promoted", "not_promoted", "no_change", "data_rejected", "failed", "spike", "drift"]] = Field(
        default_factory=lambda: ["promoted", "data_rejected", "failed", "spike", "drift"])
    timeout_s: float = Field(default=10, gt=0)


class CacheParams(Section):
    """Reuse of stage results across runs (``tasks/stagecache.py``): a stage whose inputs (data bytes, its params,
    base model, seed, code version) are unchanged is linked from an earlier run instead of recomputed."""

    enabled: bool = True
    max_gb: float | None = Field(default=20, gt=0)  # least recently used results go first; null = unbounded
    # Pretraining checkpoints mirrored to an object-store prefix (s3://bucket/prefix), for workers that share no disk:
    # a re-run on another machine or a fresh container resumes where the killed run stopped. Endpoint and
    # credentials from the usual AWS_* variables. Unset: checkpoints stay under LMOPS_HOME (a persistent volume).
    checkpoint_url: str | None = Field(default=None, pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")


class ArrivalParams(Section):
    """New data handed to lmops between runs: ``lmops data add FILE...`` or files dropped in the landing folder
    (``<landing_dir>/labeled/``, ``<landing_dir>/unlabeled/``; ``lmops serve`` watches it). Each accepted file
    becomes a batch inside the data snapshot (``data/batches/``), so every later run ingests it too."""

    landing_dir: str = "landing"  # relative to the project root
    # An object-store prefix watched the same way (s3://bucket/prefix: <prefix>/labeled/, <prefix>/unlabeled/), for a
    # team whose workers share no disk; the endpoint and credentials come from the usual AWS_* variables
    # (AWS_ENDPOINT_URL for an S3-compatible store). Set, it replaces the folder.
    landing_url: str | None = Field(default=None, pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
    poll_s: float = Field(default=10, gt=0)  # how often `lmops serve` lists the landing folder
    settle_s: float = Field(default=10, ge=0)  # a file is taken once unchanged this long: a copy in progress is left alone
    # Labeled rows added since the data version of the newest registered model before retraining is triggered.
    min_new_rows: int = Field(default=1, ge=1)
    text_column: str = "text"
    label_column: str = "label"
    label_map: LabelMap = Field(default_factory=dict)


class MonitorEntity(Section):
    """One company the monitor tracks: found in text by its name, its aliases and its tickers."""

    aliases: list[str] = Field(default_factory=list)  # other spellings, matched case-sensitively as whole words ("Apple Inc")
    tickers: list[str] = Field(default_factory=list)  # matched as cashtags ($AAPL) and as the bare upper-case word (AAPL)


class SpikeParams(Section):
    """A spike: an entity's mean sentiment in one time bucket far from its own recent past. The z-score divides the
    difference by the noise a bucket of that many documents has (documents' spread over the window, plus how much
    the window's bucket means move on their own), so a busy day and a quiet day are judged on the same scale."""

    window: int = Field(default=14, ge=2)  # earlier buckets the baseline is drawn from
    min_history: int = Field(default=3, ge=2)  # of which at least this many with min_volume documents
    min_volume: int = Field(default=5, ge=1)  # documents mentioning the entity in a bucket before it can alert or count
    z: float = Field(default=4.0, gt=0)  # |z| at or over this alerts
    min_std: float = Field(default=0.05, gt=0)  # floor on the noise: a perfectly flat history does not make every wiggle a spike


class DriftParams(Section):
    """The scored stream against the champion's training data (its reference, saved at registration)."""

    window_rows: int = Field(default=500, ge=10)  # the newest documents the champion scored
    min_rows: int = Field(default=100, ge=10)  # fewer than this: no verdict yet
    psi: float = Field(default=0.25, gt=0)  # population stability index over which a distribution has moved (0.25: a major shift)
    oov_increase: float = Field(default=0.10, gt=0)  # rise in the share of words never seen in training
    unk_increase: float = Field(default=0.02, gt=0)  # rise in the share of tokens the tokenizer cannot represent
    confidence_drop: float = Field(default=0.10, gt=0)  # fall in mean confidence


class MonitorParams(Section):
    """Finance sentiment monitoring (``lmops monitor``): the champion scores incoming text; aggregates per company and
    time bucket, spike alerts, drift against the training data, and a dashboard page."""

    model: str | None = None  # registered model name (default: register.model_name)
    alias: str = "champion"  # resolved on every run, so a new champion is picked up without a restart
    # Database URL: duckdb:///path/to/file.duckdb (default: LMOPS_HOME/monitor/monitor.duckdb) or postgresql://... (team)
    store: str | None = Field(default=None, pattern=r"^(duckdb:///.+|postgres(ql)?://.+)$")
    inbox_dir: str = "monitor/inbox"  # relative to the project root: what the monitor deployment scores (then files under done/)
    every_minutes: int = Field(default=15, ge=1)  # the monitor deployment's interval under `lmops serve`
    retrain_on_drift: bool = True  # `lmops serve`: a lmops.monitor.drift event starts the retraining deployment
    text_column: str = "text"
    time_column: str = "timestamp"  # ISO 8601 (naive = UTC) or Unix seconds
    id_column: str = "id"  # optional: without it a document's id is the hash of its source, time and text
    source_column: str = "source"  # optional: without it the file name
    min_chars: int = Field(default=3, ge=1)
    max_chars: int = Field(default=5000, ge=10)
    future_tolerance_s: float = Field(default=300, ge=0)  # clock skew allowed before a timestamp counts as in the future
    bucket: str = Field(default="1d", pattern=r"^[1-9][0-9]*[mhd]$")  # aggregation bucket: 15m, 1h, 1d
    batch_size: int = Field(default=32, ge=1)
    max_length: int = Field(default=128, ge=8)
    # torch, or onnx: the version's ONNX Runtime export made and checked by `lmops export` (faster on CPU)
    runtime: Literal["torch", "onnx"] = "torch"
    export_max_delta: float = Field(default=0.5, gt=0)  # `lmops export`: largest test macro-F1 change (points) an export may have
    chunk_rows: int = Field(default=2000, ge=1)  # rows read, scored and written at a time: memory stays flat on big inputs
    positive_label: str = "positive"  # score = P(positive) - P(negative), in [-1, 1]
    negative_label: str = "negative"
    entities: dict[str, MonitorEntity] = Field(default_factory=dict)
    # A registered entity-sentiment model (finetune.task: entity): each mention is scored for its company, not the sentence.
    entity_model: str | None = None
    # A registered NER model (finetune.task: token): its spans of ner_types are companies too (a dictionary name when
    # the span is one of its names, aliases or tickers; else the span as written).
    ner_model: str | None = None
    ner_types: list[str] = Field(default_factory=lambda: ["ORG"])
    spikes: SpikeParams = Field(default_factory=SpikeParams)
    drift: DriftParams = Field(default_factory=DriftParams)

    @property
    def bucket_s(self) -> int:
        return int(self.bucket[:-1]) * {"m": 60, "h": 3600, "d": 86400}[self.bucket[-1]]


# Sections that say how and when a run happens, not what it computes: a change there is no reason to retrain.
OPERATIONAL_SECTIONS = ("schedule", "notify", "cache", "arrival", "monitor")


class Params(Section):
    project: ProjectParams = Field(default_factory=ProjectParams)
    cache: CacheParams = Field(default_factory=CacheParams)
    arrival: ArrivalParams = Field(default_factory=ArrivalParams)
    schedule: ScheduleParams = Field(default_factory=ScheduleParams)
    notify: NotifyParams = Field(default_factory=NotifyParams)
    monitor: MonitorParams = Field(default_factory=MonitorParams)
    ingest: IngestParams
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    tokenize: TokenizeParams = Field(default_factory=TokenizeParams)
    pretrain: PretrainParams = Field(default_factory=PretrainParams)
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    distill: DistillParams = Field(default_factory=DistillParams)
    soup: SoupParams = Field(default_factory=SoupParams)
    gate: GateParams = Field(default_factory=GateParams)
    register_: RegisterParams = Field(default_factory=RegisterParams, alias="register")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _cross(self) -> "Params":
        if not any(s.role == "labeled" for s in self.ingest.sources):
            raise ValueError("ingest.sources needs at least one source with role: labeled (the fine-tuning data)")
        if not self.pretrain.enabled and not self.finetune.base_model:
            raise ValueError("pretrain.enabled is false, so finetune.base_model must name the model to fine-tune")
        if self.pretrain.enabled and self.finetune.base_model:
            raise ValueError(
                "finetune.base_model is set, so the pretrain stage's output would go unused: set pretrain.enabled: false "
                "(fine-tune that model directly) or finetune.base_model: null (fine-tune the domain-pretrained model)"
            )
        from lmops.kinds import format_owners

        errors = self.finetune.kind.check_params([s.format for s in self.ingest.sources if s.role == "labeled"], self.finetune.method,
                                                 format_owners())
        if errors:
            raise ValueError("; ".join(errors))
        kept = [s.name for s in self.ingest.sources if s.mixed_entities == "auxiliary"]
        if kept and not self.finetune.kind.entity_auxiliary:
            raise ValueError(f"ingest.sources {kept}: mixed_entities: auxiliary keeps headlines for a sentence classifier's entity "
                             f"pairs; task {self.finetune.task!r} reads the entity labels itself: set mixed_entities: quarantine")
        if self.finetune.entity_auxiliary == "mixed" and not any(s.mixed_entities == "auxiliary" for s in self.ingest.sources):
            raise ValueError("finetune.entity_auxiliary: mixed trains on the headlines a source keeps with mixed_entities: auxiliary; "
                             "set ingest.sources[<the sentfin source>].mixed_entities: auxiliary, or finetune.entity_auxiliary: all")
        if self.soup.enabled:
            if not self.soup.seeds and not self.soup.members:
                raise ValueError("soup.enabled averages the fine-tuned model with others: list soup.seeds (more training seeds) or soup.members")
            if self.project.seed in self.soup.seeds:
                raise ValueError(f"soup.seeds {self.soup.seeds} lists project.seed {self.project.seed}, whose model is already the first member")
            if self.finetune.init_seed is None:
                raise ValueError("soup.enabled: the members must start from one model, or their heads are unrelated and their average is "
                                 f"not a model: set finetune.init_seed (e.g. finetune.init_seed={self.project.seed})")
            if self.distill.enabled:
                raise ValueError("soup.enabled and distill.enabled both make the candidate from the fine-tuned model: enable one "
                                 "(distill.teachers takes the soup's members as an ensemble)")
        if self.validate_.text_max_chars < self.validate_.text_min_chars:
            raise ValueError("validate.text_max_chars must be >= validate.text_min_chars")
        if self.finetune.task == "sequence":
            missing = [f"monitor.{k}: {v!r}" for k, v in (("positive_label", self.monitor.positive_label), ("negative_label", self.monitor.negative_label))
                       if v not in self.validate_.labels]
            if missing:
                raise ValueError(f"{', '.join(missing)} not among validate.labels {self.validate_.labels}: name the labels the score is built from")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def hash(self) -> str:
        """Stable hash of the fully resolved params (lineage: which params made a model)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def model_hash(self) -> str:
        """Hash of what a run computes from: every section except the operational ones (schedule, notify, cache)."""
        d = {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL_SECTIONS}
        d["register"] = {k: v for k, v in d["register"].items() if k != "wait_for_other_run_s"}
        d["ingest"] = {k: v for k, v in d["ingest"].items() if k not in IngestParams.RUNTIME_ONLY}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _parse_scalar(text: str) -> Any:
    # YAML rules for override values: 50 → int, 1e-3 → float, true → bool, null → None, [a,b] → list.
    return yaml.safe_load(text) if text != "" else ""


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not key.path=value (e.g. pretrain.max_steps=50)")
    key, _, raw = assignment.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {assignment!r}: {key.strip()!r} is not a dotted key path (e.g. pretrain.max_steps=50)")
    try:
        value = _parse_scalar(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {assignment!r}: the value {raw!r} is not valid YAML ({exc.problem or exc}); quote it or fix the "
                          "brackets, e.g. key='[a, b]'") from None
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} invalid param(s):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - {loc}: unknown key (typo? check the section's keys in params.yaml)")
        elif isinstance(err.get("input"), dict):  # a check across keys names them itself; the whole section would bury it
            lines.append(f"  - {loc}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  - {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def load_params(
    path: Path | str | None = None,
    overrides: list[str] | None = None,
    layers: list[Path | str] | None = None,
) -> Params:
    """Load ``path`` (default: the project's params.yaml), layer extra YAML files, then overrides."""
    from lmops.env import project_root

    base_path = Path(path) if path else project_root() / "params.yaml"
    tree = _read_yaml(base_path)
    for layer in layers or []:
        tree = _merge(tree, _read_yaml(Path(layer)))
    for assignment in overrides or []:
        apply_override(tree, assignment)
    try:
        params = Params.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(base_path))) from None
    _resolve_paths(params, base_path.parent)
    return params


def _resolve_paths(params: Params, root: Path) -> None:
    """Relative source paths are relative to the params file's folder, not to the cwd."""
    for src in params.ingest.sources:
        p = Path(src.path)
        if not p.is_absolute() and "://" not in src.path:
            src.path = str((root / p).resolve())


def params_from_dict(data: dict[str, Any]) -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "params")) from None
