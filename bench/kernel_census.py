#!/usr/bin/env python3
"""Where a graph-replayed training step's GPU time goes, kernel by kernel, from an ncu CSV.

On the GPU box (one step after one warm-up; ncu runs every kernel alone):

    ncu --graph-profiling node --clock-control none --cache-control none \\
        --metrics gpu__time_duration.sum --csv --print-units base --print-kernel-base function \\
        bench_train_gpu --only llama1b --targets all-linear --checkpointing 0 --steps 1 --warmup 1 > ncu.csv
    python3 bench/kernel_census.py ncu.csv [--top 40]

The step is the kernels after the second-to-last AdamW launch up to the last one. Prints the
step's kernels summed by kind (GEMMs by time a call, cuDNN's attention, lowrank's own kernels by
name) and the costliest (kernel, grid) pairs. Each kernel ran alone at the clock ncu found: a real
step at the card's power cap runs slower (docs/cuda-performance-notes.md).
"""
import argparse
import collections
import csv
import sys


def read_kernels(path):
    kernels, order = {}, []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 15 or not row[0].isdigit():
                continue  # ncu's own lines and the program's output
            i = int(row[0])
            if i not in kernels:
                kernels[i] = {"name": row[4], "grid": row[8]}
                order.append(i)
            if row[12] == "gpu__time_duration.sum":
                kernels[i]["us"] = float(row[14].replace(",", "")) / 1e3
    return kernels, order


def kind(name, us):
    if name.startswith(("nvjet", "sm90_xmma", "cutlass")) or "splitK" in name or "gemm" in name.lower():
        return "GEMMs over 600 us" if us > 600 else "GEMMs of 80-600 us" if us > 80 else \
            "GEMMs under 80 us, split-K reductions"
    if "bprop" in name:
        return "cuDNN attention backward"
    if "fprop" in name:
        return "cuDNN attention forward"
    if any(k in name for k in ("cudnn", "fmha", "dot_do", "convert_dq")):
        return "cuDNN attention helpers"
    return name


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    try:
        kernels, order = read_kernels(args.csv)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        fail(f"{args.csv}: {e}")
    adamw = [i for i in order if kernels[i]["name"].startswith("adamw")]
    if len(adamw) < 2:
        fail(f"{args.csv}: no two optimizer steps (adamw kernels) in it: profile --steps 1 --warmup 1 or more")
    step = [i for i in order if adamw[-2] < i <= adamw[-1] and "us" in kernels[i]]
    total = sum(kernels[i]["us"] for i in step)
    print(f"{len(step)} kernels, {total / 1e3:.2f} ms summed")
    by_kind = collections.defaultdict(lambda: [0, 0.0])
    by_kernel = collections.defaultdict(lambda: [0, 0.0])
    for i in step:
        k = kernels[i]
        for table, key in ((by_kind, kind(k["name"], k["us"])), (by_kernel, (k["name"][:70], k["grid"]))):
            table[key][0] += 1
            table[key][1] += k["us"]
    print(f"\n{'ms':>8} {'share':>6} {'calls':>6}  kind")
    for key, (n, us) in sorted(by_kind.items(), key=lambda kv: -kv[1][1]):
        print(f"{us / 1e3:8.2f} {100 * us / total:5.1f}% {n:6d}  {key}")
    print(f"\n{'us':>9} {'calls':>6} {'us/call':>8}  kernel, grid")
    for (name, grid), (n, us) in sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"{us:9.1f} {n:6d} {us / n:8.1f}  {name} {grid}")


if __name__ == "__main__":
    main()
