"""Generates spam_samples.json, the fixture of crates/sluice-server/tests/batching.rs.

Twelve held-out emails of varying tokenized length: their line in samples.jsonl, id, label and
the token ids from the model's own tokenizer (truncated to 128 tokens as shipped, but NOT
padded: the server pads each batch to its longest request). The test reads the expected
probability from the models folder's samples.jsonl, so that the fixture holds for whichever
copy of spam-accurate scripts/setup.sh put there (linked or rebuilt from packages). Committed
so the test needs no tokenizer; rerun after changing the selection:

    .venv/bin/pip install tokenizers
    .venv/bin/python crates/sluice-server/tests/data/make_spam_samples.py [MODELS_DIR]

MODELS_DIR defaults to $SLUICE_MODELS, else $SLUICE_HOME/models, else
~/.local/share/sluice/models.
"""

import json
import os
import sys

from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_TOKENS = 128


def models_dir():
    if len(sys.argv) > 1:
        return sys.argv[1]
    if os.environ.get("SLUICE_MODELS"):
        return os.environ["SLUICE_MODELS"]
    home = os.environ.get("SLUICE_HOME") or os.path.expanduser("~/.local/share/sluice")
    return os.path.join(home, "models")


def main():
    models = models_dir()
    if not os.path.isdir(os.path.join(models, "spam-accurate")):
        sys.exit(f"{models}/spam-accurate does not exist: run scripts/setup.sh or pass the models folder")
    tok = Tokenizer.from_file(os.path.join(models, "spam-accurate/tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    with open(os.path.join(models, "datasets/spamassassin/samples.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    for i, r in enumerate(rows):
        r["line"] = i
        r["input_ids"] = tok.encode(r["text"]).ids
    # Clear cases only (p far from 0.5), so a slight batch-dependent shift of an int8 model's
    # probabilities cannot flip a label.
    clear = [r for r in rows if abs(r["accurate_p_spam"] - 0.5) > 0.15]
    short = sorted((r for r in clear if len(r["input_ids"]) < MAX_TOKENS), key=lambda r: (len(r["input_ids"]), r["id"]))
    full = [r for r in clear if len(r["input_ids"]) == MAX_TOKENS]
    picked = short[::2][:9]
    picked += [r for r in full if r["label"] == "spam"][:2]
    picked += [max((r for r in full if r["label"] == "ham"), key=lambda r: r["accurate_p_spam"])]
    # Ids repeat across the corpus' groups: the line in samples.jsonl names the email.
    out = [{"line": r["line"], "id": r["id"], "label": r["label"], "input_ids": r["input_ids"]} for r in picked]
    with open(os.path.join(HERE, "spam_samples.json"), "w") as f:
        # One sample per line: readable diffs, small file.
        f.write("[\n" + ",\n".join(json.dumps(r) for r in out) + "\n]\n")
    print(f"wrote {len(out)} samples, lengths {[len(r['input_ids']) for r in out]}")


if __name__ == "__main__":
    main()
