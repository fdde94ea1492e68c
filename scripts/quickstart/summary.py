#!/usr/bin/env python3
"""Prints the quickstart's numbers from what `lowrank train` left (standard library only).

    summary.py BASE_MODEL_DIR ADAPTER_DIR [--json OUT.json]

  - trainable parameters: the LoRA A/B tensors in adapter_model.safetensors, as a count and as a
    share of base + adapter (PEFT's print_trainable_parameters convention)
  - eval loss (and perplexity) before and after training, from ADAPTER_DIR/metrics.jsonl
  - steps, tokens, training throughput; adapter size on disk next to the base model's
"""
import json
import math
import os
import struct
import sys


def st_params(path):
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
    total = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        c = 1
        for d in v["shape"]:
            c *= d
        total += c
    return total


def model_params(d):
    files = [f for f in os.listdir(d) if f.endswith(".safetensors")]
    return sum(st_params(os.path.join(d, f)) for f in files), sum(os.path.getsize(os.path.join(d, f)) for f in files)


def main():
    base, adapter = sys.argv[1], sys.argv[2]
    out_json = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--json" else None
    n_base, base_bytes = model_params(base)
    ad_file = os.path.join(adapter, "adapter_model.safetensors")
    n_lora = st_params(ad_file)
    records = []
    with open(os.path.join(adapter, "metrics.jsonl")) as fh:
        for line in fh:
            if line.strip():
                records.append(json.loads(line))
    evals = [r for r in records if isinstance(r.get("eval_loss"), (int, float))]
    before = next((r["eval_loss"] for r in evals if r.get("when") == "before"), None)
    after = next((r["eval_loss"] for r in reversed(evals) if r.get("when") == "after"), None)
    by_step = {}
    for r in records:  # a resumed run may log a step twice: keep the last
        if isinstance(r.get("loss"), (int, float)) and isinstance(r.get("step"), int):
            by_step[r["step"]] = r
    train = [by_step[k] for k in sorted(by_step)]
    tokens = sum(r.get("tokens") or 0 for r in train)  # "tokens" is per logged step
    last = train[-1] if train else {}
    tps = [r["tokens_per_second"] for r in train if isinstance(r.get("tokens_per_second"), (int, float))]
    s = {
        "base_parameters": n_base,
        "trainable_parameters": n_lora,
        "trainable_percent": 100.0 * n_lora / (n_base + n_lora),
        "eval_loss_before": before,
        "eval_loss_after": after,
        "steps": last.get("step"),
        "train_loss_first": train[0]["loss"] if train else None,
        "train_loss_last": last.get("loss"),
        "tokens": tokens,
        "tokens_per_second": (tokens / sum(r["tokens"] / r["tokens_per_second"] for r in train
                                           if r.get("tokens") and r.get("tokens_per_second"))) if tps else None,
        "adapter_bytes": os.path.getsize(ad_file),
        "base_bytes": base_bytes,
    }
    print("trainable parameters: %s of %s (%.2f%%): LoRA A/B matrices only; the base stays frozen" %
          (f"{n_lora:,}", f"{n_base + n_lora:,}", s["trainable_percent"]))
    if before is not None and after is not None:
        print("eval loss (held-out Bible passages): before %.4f (perplexity %.1f) -> after %.4f (perplexity %.1f)" %
              (before, math.exp(before), after, math.exp(after)))
    if train:
        print("training: %s steps, %s tokens, train loss %.4f -> %.4f%s" %
              (s["steps"], f"{s['tokens']:,}" if s["tokens"] else "?", s["train_loss_first"], s["train_loss_last"],
               ", %.0f tokens/s" % s["tokens_per_second"] if s["tokens_per_second"] else ""))
    print("adapter file: %.2f MB (base model weights: %.1f MB)" % (s["adapter_bytes"] / 1e6, base_bytes / 1e6))
    if out_json:
        with open(out_json, "w") as fh:
            json.dump(s, fh, indent=2)
            fh.write("\n")
    if before is not None and after is not None and not after < before:
        print("warning: the eval loss did not go down", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
