#!/usr/bin/env python3
"""Scores `lowrank generate --input eval_prompts.jsonl --greedy` output for the experiments' tasks.

    score.py TASK_JSON GENERATED.jsonl      prints {"metric", "n", ...} as JSON

The generated lines repeat the input line (prompt, completion = the reference) and add "text",
the generated continuation (generation stops at the end-of-sequence token the training appended
to every completion). Metrics (TASK_JSON's "metric"):
  accuracy  the first word of the generated text equals the reference label (" spam" / " ham");
            anything else (another word, nothing) is wrong
  tag_f1    tags compared by position: correct = positions where the i-th generated tag equals
            the i-th reference tag; precision = correct / generated tags, recall = correct /
            reference tags, both summed over all lines, F1 their harmonic mean; also exact_match
            (the whole tag sequence right) and length_match (as many tags as words)
Standard library only.
"""
import json
import sys


def score(task, lines):
    kind = task["metric"]
    if not lines:
        raise SystemExit("error: no generated lines to score")
    if kind == "accuracy":
        labels = [x.strip() for x in task["labels"]]
        right = other = 0
        for r in lines:
            words = r["text"].split()
            got = words[0] if words else ""
            right += got == r["completion"].strip()
            other += got not in labels
        return {"metric": right / len(lines), "n": len(lines), "not_a_label": other}
    if kind == "tag_f1":
        correct = pred = ref = exact = same_len = 0
        for r in lines:
            p, g = r["text"].split(), r["completion"].split()
            c = sum(x == y for x, y in zip(p, g))
            correct, pred, ref = correct + c, pred + len(p), ref + len(g)
            exact += p == g
            same_len += len(p) == len(g)
        prec = correct / pred if pred else 0.0
        rec = correct / ref
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        return {"metric": f1, "n": len(lines), "precision": prec, "recall": rec,
                "exact_match": exact / len(lines), "length_match": same_len / len(lines)}
    raise SystemExit("error: %s: unknown metric %r (accuracy, tag_f1)" % (task.get("task"), kind))


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: score.py TASK_JSON GENERATED.jsonl")
    task = json.load(open(sys.argv[1]))
    lines = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
    print(json.dumps(score(task, lines)))


if __name__ == "__main__":
    main()
