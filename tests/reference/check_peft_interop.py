#!/usr/bin/env python3
"""Loads what lowrank wrote (scripts/make-interop-outputs.sh) with PEFT and transformers and checks
that they compute the same eval loss as lowrank did. Run on the GPU box:

    python3 tests/reference/check_peft_interop.py --interop .devrun/interop \
        --models tests/fixtures/models --out OUT/interop.json
"""
import argparse
import json
import os
import traceback

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def load(path):
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, attn_implementation="eager").eval()
    except TypeError:
        return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float64, attn_implementation="eager").eval()


def eval_loss(model, path):
    nll, tokens = 0.0, 0
    with open(path) as f:
        seqs = [json.loads(line)["input_ids"] for line in f if line.strip()]
    with torch.no_grad():
        for ids in seqs:
            if len(ids) < 2:
                continue
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0]
            nll += torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="sum").item()
            tokens += len(ids) - 1
    return nll / tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--interop", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(os.path.join(args.interop, "ours.json")) as f:
        ours = json.load(f)
    results, ok = {}, True
    for name, entry in ours.items():
        base_dir = os.path.join(args.models, entry["base"])
        path = os.path.join(args.interop, name)
        try:
            if entry["kind"] == "adapter":
                model = PeftModel.from_pretrained(load(base_dir), path).double().eval()
            else:
                model = load(path)
            theirs = eval_loss(model, os.path.join(base_dir, "eval.jsonl"))
            mine = entry["ours"]["loss"]
            rel = abs(theirs - mine) / abs(theirs)
            good = rel < 1e-5
            results[name] = {"peft_or_transformers": theirs, "lowrank": mine, "rel_diff": rel, "ok": good}
        except Exception as e:  # report and continue
            traceback.print_exc()
            results[name] = {"error": repr(e), "ok": False}
            good = False
        ok = ok and good
        print(f"{name:22s} {results[name]}")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print("ALL OK" if ok else "MISMATCHES")


if __name__ == "__main__":
    main()
