"""A model card: what the model is, what made it, how it scored, and what it is not for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmops.kinds import TaskKind


def write_model_card(path: Path, name: str, lineage: dict[str, str], metrics: dict[str, float], params: dict[str, Any], report_md: str, command: str,
                     kind: TaskKind) -> Path:
    ft, pre = params["finetune"], params["pretrain"]
    base = ft.get("base_model") or f"domain-pretrained {pre['objective'].upper()} ({pre.get('base_model') or 'from scratch'}, {pre['num_layers']} layers, {pre['hidden_size']} hidden)"
    split_seed = params["ingest"].get("split_seed")  # IngestParams.seed_for_split, on the params as saved
    split_seed = params["project"]["seed"] if split_seed is None else split_seed
    sources = ", ".join(f"{s['name']} ({s['role']}, {s['format']})" for s in params["ingest"]["sources"])
    text = f"""# Model card: {name}

**Task:** {kind.description} ({', '.join(params['validate']['labels'])}) · **method:** {ft['method']} fine-tuning · **base:** {base}

## Lineage
| field | value |
|---|---|
| data version (DVC md5) | `{lineage.get('data_version')}` |
| params hash | `{lineage.get('params_hash')}` |
| git commit | `{lineage.get('git_commit')}` (uncommitted changes: {lineage.get('git_dirty')}) |
| Prefect flow run | `{lineage.get('flow_run_id')}` |
| parent checkpoint | `{lineage.get('parent_model')}` |
| data validation | {lineage.get('validation')} |
| command | `{command}` |

## Training data
Sources: {sources}. Splits are seeded and stratified (seed {split_seed}); rows not kept are listed with reasons in the snapshot's `quarantine.parquet`.

## Evaluation (held-out test split)
{report_md.split(chr(10), 2)[-1] if report_md else ''}

## Intended use and limits
Monitoring the sentiment of short finance news text in English. Not for investment decisions on its own; scores are
calibrated only on the distribution of the training sources, and headlines with mixed entity-level sentiment were
excluded from the headline labels.
"""
    path.write_text(text)
    return path
