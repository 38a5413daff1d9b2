"""Builds the bundled monitoring stream from the shared data sets (run once; the output is committed):

    python samples/finance/stream/make_stream.py ../shared/data

- ``stream.csv``: 30 days (2026-10-01 .. 2026-10-30 UTC) of finance headlines (SEntFiN, MIT) and news tweets
  (zeroshot/twitter-financial-news-sentiment, MIT), ~40 a day, with ids, timestamps and sources. Infosys is
  mentioned a few times a day in neutral or positive headlines; on 2026-10-27 a planted spike: 12 headlines
  that SEntFiN labels negative for Infosys.
- ``drifted.csv``: one day (2026-10-30) of sentences from FOMC statements (US public information): text the
  headline model was not trained on, for the drift check.
"""

from __future__ import annotations

import ast
import random
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

SEED = 2026
START = datetime(2026, 10, 1, tzinfo=timezone.utc)
DAYS = 30
SPIKE_DAY = 26  # 0-based: 2026-10-27


def decisions(raw: str) -> dict[str, str]:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return {}


def main(shared: Path, out: Path) -> None:
    rng = random.Random(SEED)
    s = pd.read_csv(shared / "sentfin" / "SEntFiN.csv")
    s["d"] = s["Decisions"].map(decisions)
    infy_neg = [t for t, d in zip(s["Title"], s["d"]) if d.get("Infosys") == "negative"]
    infy_other = [t for t, d in zip(s["Title"], s["d"]) if d.get("Infosys") in ("positive", "neutral")]
    rest = [t for t, d in zip(s["Title"], s["d"]) if "Infosys" not in d and d]
    tweets = pd.read_csv(shared / "twitter_financial_news_sentiment" / "sent_train.csv")["text"].tolist()
    rng.shuffle(infy_neg), rng.shuffle(infy_other), rng.shuffle(rest), rng.shuffle(tweets)
    rows = []

    def add(day: int, text: str, source: str) -> None:
        ts = START + timedelta(days=day, seconds=rng.randrange(6 * 3600, 22 * 3600))
        rows.append({"id": f"{source}-{len(rows) + 1:05d}", "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "source": source,
                     "text": re.sub(r"\s+", " ", text).strip()})

    for day in range(DAYS):
        for _ in range(24):
            add(day, rest.pop(), "headlines")
        for _ in range(12):
            add(day, tweets.pop(), "tweets")
        for _ in range(4 if day != SPIKE_DAY else 1):
            add(day, infy_other.pop() if infy_other else rest.pop(), "headlines")
        if day == SPIKE_DAY:
            for _ in range(12):
                add(day, infy_neg.pop(), "headlines")
    frame = pd.DataFrame(rows).sort_values("timestamp", kind="stable")
    frame.to_csv(out / "stream.csv", index=False)

    sentences = []
    for f in sorted((shared / "corpus_fomc").rglob("*.txt")):
        if "statement" in str(f).lower():
            text = f.read_text(encoding="utf-8-sig", errors="replace")
            sentences += [x.strip() for x in re.split(r"(?<=[.;])\s+", text) if 60 <= len(x.strip()) <= 400]
    rng.shuffle(sentences)
    drift = [{"id": f"fomc-{i + 1:05d}", "timestamp": (START + timedelta(days=DAYS - 1, seconds=rng.randrange(8 * 3600, 20 * 3600))).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "source": "fomc", "text": t} for i, t in enumerate(sentences[:300])]
    pd.DataFrame(drift).sort_values("timestamp", kind="stable").to_csv(out / "drifted.csv", index=False)
    print(f"stream.csv: {len(frame)} rows; drifted.csv: {len(drift)} rows")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"), Path(__file__).parent)
