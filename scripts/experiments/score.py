#!/usr/bin/env python3
"""Scores `lowrank generate --input eval_prompts.jsonl --greedy` output for the experiments' tasks.

    score.py TASK_JSON GENERATED.jsonl      prints {"metric", "n", ...} as JSON
    score.py --rescore RESULTS.jsonl [DATA_ROOT]
                                            re-scores every row of a generated task from its
                                            RUN_DIR/generated.jsonl with DATA_ROOT/TASK/task.json
                                            (default out/experiments/data), rewriting metric,
                                            metric_name and score in place (after a metric change)

The generated lines repeat the input line (prompt, completion = the reference) and add "text",
the generated continuation (generation stops at the end-of-sequence token the training appended
to every completion). Metrics (TASK_JSON's "metric"):
  accuracy  the first word of the generated text equals the reference label (" spam" / " ham");
            anything else (another word, nothing) is wrong
  tag_f1    tags matched in order: correct = the length of the longest common subsequence of the
            generated and the reference tags (one tag left out or added costs that tag, not every
            tag after it, as a comparison by position would); precision = correct / generated
            tags, recall = correct / reference tags, both summed over all lines, F1 their harmonic
            mean (ROUGE-L's F over tags). Also position_f1 (the i-th tag against the i-th: the
            strict score), exact_match (the whole sequence right) and length_match (as many tags
            as words)
Standard library only.
"""
import json
import sys


def lcs(a, b):
    """Length of the longest common subsequence of two lists."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def f1(correct, pred, ref):
    prec = correct / pred if pred else 0.0
    rec = correct / ref if ref else 0.0
    return prec, rec, (2 * prec * rec / (prec + rec) if prec + rec else 0.0)


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
        in_order = by_position = pred = ref = exact = same_len = 0
        for r in lines:
            p, g = r["text"].split(), r["completion"].split()
            in_order += lcs(p, g)
            by_position += sum(x == y for x, y in zip(p, g))
            pred, ref = pred + len(p), ref + len(g)
            exact += p == g
            same_len += len(p) == len(g)
        prec, rec, f = f1(in_order, pred, ref)
        return {"metric": f, "n": len(lines), "precision": prec, "recall": rec,
                "position_f1": f1(by_position, pred, ref)[2],
                "exact_match": exact / len(lines), "length_match": same_len / len(lines)}
    raise SystemExit("error: %s: unknown metric %r (accuracy, tag_f1)" % (task.get("task"), kind))


def rescore(results, data_root):
    import os
    rows = [json.loads(l) for l in open(results) if l.strip()]
    n = 0
    for r in rows:
        gen = os.path.join(r.get("run_dir", ""), "generated.jsonl")
        task_path = os.path.join(data_root, r["task"], "task.json")
        if r.get("metric") is None or not os.path.exists(gen) or not os.path.exists(task_path):
            continue
        task = json.load(open(task_path))
        sc = score(task, [json.loads(l) for l in open(gen, encoding="utf-8") if l.strip()])
        r["metric"] = round(sc.pop("metric"), 6)
        r["metric_name"] = task["metric_name"]
        r["score"] = {k: round(v, 6) if isinstance(v, float) else v for k, v in sc.items()}
        n += 1
    with open(results + ".tmp", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(results + ".tmp", results)
    print("rescored %d of %d rows in %s" % (n, len(rows), results))


def main():
    if len(sys.argv) in (3, 4) and sys.argv[1] == "--rescore":
        return rescore(sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else "out/experiments/data")
    if len(sys.argv) != 3:
        raise SystemExit("usage: score.py TASK_JSON GENERATED.jsonl | score.py --rescore RESULTS.jsonl [DATA_ROOT]")
    task = json.load(open(sys.argv[1]))
    lines = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
    print(json.dumps(score(task, lines)))


if __name__ == "__main__":
    main()
