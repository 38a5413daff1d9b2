"""Entity F1 of one NER model, per-word argmax vs the IOB2-constrained Viterbi path that the token kind decodes
with, on FIN3 (test), FIN5's validation split and WNUT17's test and dev sets (their person / location /
corporation+group tags as PER / LOC / ORG, like configs/minilm-ner.yaml maps the training set); paired bootstrap
over sentences.

Run: .venv/bin/python benchmarks/ner_decoding.py MODEL_DIR INGEST_DIR/test.parquet benchmarks/results/ner_viterbi.json [WNUT17_DIR]
(INGEST_DIR: the ingest stage of a `lmops finetune --params configs/minilm-ner.yaml` run; its validation.parquet is read too)
"""
import html, json, sys
from pathlib import Path
import pandas as pd
from lmops.kinds import KINDS
from lmops.tasks.predict import load_classifier, predict_logits
from lmops.kinds.token import viterbi_tags
from lmops.metrics import seqeval_scores

model_dir, test_path = sys.argv[1], sys.argv[2]
labels = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
kind = KINDS["token"]
model, tok = load_classifier(model_dir, labels, kind)
WNUT = sys.argv[4] if len(sys.argv) > 4 else "../shared/data/ner_wnut17"  # the bundled copy holds the training file only
WMAP = {"person": "PER", "location": "LOC", "corporation": "ORG", "group": "ORG"}


def wnut(path):
    rows, words, tags = [], [], []
    for line in list(Path(path).read_text().splitlines()) + [""]:
        if not line.strip():
            if words:
                rows.append({"text": " ".join(words), "label": " ".join(tags)})
            words, tags = [], []
            continue
        w, t = line.split("\t")
        kind_ = WMAP.get(t[2:]) if t != "O" else None
        words.append(html.unescape(w).replace(" ", "_") or "_")
        tags.append(f"{t[:2]}{kind_}" if kind_ else "O")
    return pd.DataFrame(rows)


sets = {"FIN3 test": pd.read_parquet(test_path),
        "FIN5 validation": pd.read_parquet(Path(test_path).with_name("validation.parquet")),
        "WNUT17 test (PER/LOC/ORG)": wnut(WNUT + "/emerging.test.annotated"),
        "WNUT17 dev (PER/LOC/ORG)": wnut(WNUT + "/emerging.dev.conll")}
out = {}
for name, frame in sets.items():
    inputs = kind.inputs(frame)
    logits = predict_logits(model, tok, inputs, kind, labels, 256, 16)
    refs = kind.targets(frame, labels)
    arg = [l.argmax(-1).tolist() for l in logits]
    vit = [viterbi_tags(l, labels) for l in logits]
    r = {"sentences": len(frame), "changed_sentences": sum(a != v for a, v in zip(arg, vit))}
    for dec, preds in (("argmax", arg), ("viterbi", vit)):
        s = seqeval_scores(refs, preds, labels)
        r[dec] = {"micro_f1": round(s["micro_f1"], 4), "per_type": {k: round(v["f1"], 4) for k, v in s.get("per_class", {}).items()}}
    txt = lambda P: [" ".join(labels[j] for j in p) for p in P]
    d = kind.paired_bootstrap(txt(refs), txt(arg), txt(vit), labels, 0)
    r["viterbi_minus_argmax"] = d
    out[name] = r
    print(name, json.dumps(r, default=str), flush=True)
Path(sys.argv[3] if len(sys.argv) > 3 else "/dev/null").write_text(json.dumps(out, indent=1, default=str))
