"""Generates spam_samples.json, the fixture of crates/sluice-server/tests/batching.rs.

Twelve held-out emails of varying tokenized length, with their label, the spam-accurate model's
batch-1 p(spam) and the token ids from the model's own tokenizer (truncated to 128 tokens as
shipped, but NOT padded: the server pads each batch to its longest request). Committed so the
test needs no tokenizer; rerun after changing the selection:

    pip install tokenizers
    python crates/sluice-server/tests/data/make_spam_samples.py [SHARED_MODELS_DIR]
"""

import json
import os
import sys

from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "../../../../../shared/models")
MAX_TOKENS = 128


def main():
    tok = Tokenizer.from_file(os.path.join(SHARED, "spam-accurate/tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    with open(os.path.join(SHARED, "datasets/spamassassin/samples.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    for r in rows:
        r["input_ids"] = tok.encode(r["text"]).ids
    # Clear cases only (p far from 0.5), so a slight batch-dependent shift of an int8 model's
    # probabilities cannot flip a label.
    clear = [r for r in rows if abs(r["accurate_p_spam"] - 0.5) > 0.15]
    short = sorted((r for r in clear if len(r["input_ids"]) < MAX_TOKENS), key=lambda r: (len(r["input_ids"]), r["id"]))
    full = [r for r in clear if len(r["input_ids"]) == MAX_TOKENS]
    picked = short[::2][:9]
    picked += [r for r in full if r["label"] == "spam"][:2]
    picked += [max((r for r in full if r["label"] == "ham"), key=lambda r: r["accurate_p_spam"])]
    out = [
        {"id": r["id"], "label": r["label"], "accurate_p_spam": r["accurate_p_spam"], "input_ids": r["input_ids"]}
        for r in picked
    ]
    with open(os.path.join(HERE, "spam_samples.json"), "w") as f:
        # One sample per line: readable diffs, small file.
        f.write("[\n" + ",\n".join(json.dumps(r) for r in out) + "\n]\n")
    print(f"wrote {len(out)} samples, lengths {[len(r['input_ids']) for r in out]}")


if __name__ == "__main__":
    main()
