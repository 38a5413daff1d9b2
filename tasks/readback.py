"""Read a logged model back from the artifact store and check it reproduces the candidate's predictions."""

from __future__ import annotations

from pathlib import Path

from lmops.errors import RegistryError
from lmops.kinds import TaskKind


def check_readback(source: str, predictions_path: Path, data_path: Path, labels: list[str], max_length: int, work: Path, kind: TaskKind,
                   sample: int = 64) -> int:
    import pandas as pd

    from lmops.tasks.predict import load_classifier, predict_labels
    from lmops.tasks.registry import download_model

    local = download_model(source, work)
    data = pd.read_parquet(data_path).head(sample)
    expected = pd.read_parquet(predictions_path).head(sample)["prediction"].tolist()
    model, tokenizer = load_classifier(str(local), labels, kind)
    got, _ = predict_labels(model, tokenizer, data, labels, kind, max_length, 64)
    mismatches = sum(a != b for a, b in zip(got, expected))
    if mismatches:
        raise RegistryError(f"logged model at {source} disagrees with the evaluated candidate on {mismatches}/{len(got)} test rows; not registering it")
    return len(got)
