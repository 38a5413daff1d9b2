"""The texts a model was fitted or selected on, kept beside its weights as 64-bit keys, so that a score on rows it
saw is never read as a held-out one: another seed's test split (three SEntFiN seeds' test splits shared ~80% of their
rows with each other's training rows), a canary that is also a training source, a champion trained before the data
was split again. ``lmops compare``, the gate and distillation read it.

The key is ingest's exact-duplicate key (case and whitespace folded), so a text counts as seen in whatever spelling
ingest would have called a duplicate. A folder without the file (trained before lmops kept it, a base checkpoint)
is "not recorded": nothing is left out for it, and the reports say so."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

FILE = "seen_texts.npy"


def keys_in_order(texts: Iterable[str]):
    """One uint64 key per text, in order (duplicates kept)."""
    import numpy as np

    from lmops.tasks.dedup import text_key

    return np.fromiter((int(text_key(t)[:16], 16) for t in texts), dtype=np.uint64)


def keys(texts: Iterable[str]):
    """Sorted unique uint64 keys of ``texts``."""
    import numpy as np

    return np.unique(keys_in_order(texts))


def of(model_dir: str | Path):
    """The keys a model folder recorded, or None when it recorded none."""
    import numpy as np

    path = Path(model_dir) / FILE
    return np.load(path) if path.is_file() else None


def record(model_dir: str | Path, frames: Iterable, inherit: Iterable[str | Path] = ()) -> int:
    """Write the keys of every ``text`` in ``frames`` (DataFrames or Parquet paths), with what the models in ``inherit``
    recorded (a classifier trained further, a distillation's teachers); returns how many texts that is."""
    import numpy as np
    import pandas as pd

    parts = [keys((pd.read_parquet(f, columns=["text"]) if isinstance(f, (str, Path)) else f)["text"]) for f in frames]
    parts += [k for k in (of(m) for m in inherit) if k is not None]
    merged = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)
    np.save(Path(model_dir) / FILE, merged)
    return len(merged)


def seen_rows(model_dir: str | Path, texts: Iterable[str]):
    """Boolean mask: which of ``texts`` the model was fitted or selected on; None when it recorded nothing."""
    import numpy as np

    known = of(model_dir)
    return None if known is None else np.isin(keys_in_order(texts), known)


def held_out(data_path: Path, models: list[tuple[str, str | Path]], out_path: Path) -> tuple[Path, dict[str, int | None]]:
    """``data_path``'s rows that none of ``models`` ((name, folder) pairs) was fitted or selected on, written to
    ``out_path`` (``data_path`` itself when none is left out); and per model how many rows it had seen (None: not
    recorded). Raises DataError when every row was seen."""
    import numpy as np
    import pandas as pd

    from lmops.errors import DataError

    frame = pd.read_parquet(data_path)
    row_keys = keys_in_order(frame["text"])
    counts: dict[str, int | None] = {}
    drop = np.zeros(len(frame), dtype=bool)
    for name, folder in models:
        known = of(folder)
        if known is None:
            counts[name] = None
            continue
        mask = np.isin(row_keys, known)
        counts[name] = int(mask.sum())
        drop |= mask
    if not drop.any():
        return data_path, counts
    if drop.all():
        seen_by = ", ".join(f"{n} ({c})" for n, c in counts.items() if c)
        raise DataError(f"{data_path}: every one of its {len(frame)} rows was a training or validation text of {seen_by}; "
                        "score them on rows they did not train on (ingest.split_seed holds one split for all seeds)")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    frame[~drop].to_parquet(out_path, index=False)
    return out_path, counts


def require_held_out(models: Iterable[str | Path], test_path: Path, role: str, product: str) -> None:
    """A model fitted on this snapshot's test rows (trained on another split) would pass them on to the ``product`` made
    from it (a distilled student, a soup) and make both their test scores in-sample: refused, naming the fix."""
    import pandas as pd

    from lmops.errors import UserError

    if not Path(test_path).is_file():
        return
    texts = pd.read_parquet(test_path, columns=["text"])["text"]
    for model in models:
        mask = seen_rows(model, texts)
        if mask is not None and mask.any():
            raise UserError(f"{role} {model} was trained or validated on {int(mask.sum())} of the {len(texts)} rows of this snapshot's "
                            f"test split ({test_path}): it was trained on another split. Train the {role}s on this one (the same "
                            f"ingest.split_seed, or project.seed when that is unset) so the {product}'s and the {role}s' test scores are held out")
