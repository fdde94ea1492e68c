#!/usr/bin/env python3
"""One row of bench/serve_gpu.sh: the load generator's JSON line plus what the server's counters
(bench/serve_gpu.sh's `counters`: "name=value ..." before and after the run) say it did meanwhile,
plus fixed fields ("key=value ..."; numbers stay numbers).
usage: serve_counters.py ROW_JSON BEFORE AFTER FIELDS"""
import json
import sys


def parse(words):
    out = {}
    for w in words.split():
        k, _, v = w.partition("=")
        out[k] = v
    return out


def number(v):
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


row = json.loads(sys.argv[1])
before = {k: float(v) for k, v in parse(sys.argv[2]).items()}
after = {k: float(v) for k, v in parse(sys.argv[3]).items()}
delta = {k: after[k] - before.get(k, 0.0) for k in after}
rounds = int(delta.get("rounds", 0))
row["decode_rounds"] = rounds
row["mean_batch"] = round(delta.get("sequences", 0) / rounds, 2) if rounds else 0
if "prefill_rounds" in delta:
    row["prefill_rounds"] = int(delta["prefill_rounds"])
for k in ("prefill_s", "decode_s", "queue_s"):
    if k in delta:
        row[k] = round(delta[k], 4)
if "device_mallocs" in delta:
    row["device_mallocs"] = int(delta["device_mallocs"])
row.update({k: number(v) for k, v in parse(sys.argv[4]).items()})
print(json.dumps(row))
