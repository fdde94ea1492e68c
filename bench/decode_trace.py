#!/usr/bin/env python3
"""A one-stream decode step's real timeline, kernel by kernel, from LOWRANK_DECODE_TRACE's file.

On the GPU box (the graphs' last replay is what the file holds):

    LOWRANK_DECODE_TRACE=trace.txt bench_mixed_decode_gpu --only qwen0.5b --batch 1 --adapters 0 --new 64
    python3 bench/decode_trace.py trace.txt [--layers 24] [--show 8]

Each line of the file is a launch of a traced kernel (the fused projections, the attention with
o; once a step the embedding and the vocabulary's projection with its pick, project_argmax): index, kernel, blocks, then the GPU's global timer in ns: first and last block start,
first and last return from the wait for the kernel before (for the attention with o: the end
of its attention), the last block past its input's staging (fused projections), last end.
Takes the last `layers` x (kernels a layer) launches, i.e. the last replayed step, and prints
per kind of kernel, averaged over the layers, in µs:
  since-prev  its last end minus the previous kernel's last end (its share of the step)
  start       its first block's start minus the previous kernel's end (negative: started
              early, beside the kernel before, as a programmatic dependent)
  wait        its last wait return minus the previous kernel's end
  after-wait  its last end minus its last wait return
  to-staged   the last block past staging its input (x, normed; the attention with o: its
              cluster's sums visible) minus the last wait return
Stamping costs the step ~5% (one atomic a warp).
"""
import argparse
import collections
import statistics

OUTSIDE = {"embedding", "project_argmax"}  # launches outside the layers, once a step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--show", type=int, default=8, help="launches of the step to print one by one")
    args = ap.parse_args()
    rows, outside = [], []
    with open(args.trace) as f:
        for line in f:
            if line.startswith("B "):  # LOWRANK_DECODE_TRACE_BLOCKS's lines, a block each
                continue
            i, name, blocks, s0, s1, w0, w1, m1, e1 = line.split()
            row = (name, int(blocks), int(s0), int(s1), int(w0), int(w1), int(m1), int(e1))
            (outside if name in OUTSIDE else rows).append(row)
    # A layer's launches: the shortest period that repeats over the last `layers` layers (a kernel
    # launched twice a layer, as linear_residual past 256 keys, is told apart by its position).
    names = [r[0] for r in rows]
    period = next((p for p in range(1, 9) if len(names) >= p * args.layers and
                   all(names[-i] == names[-i - p] for i in range(1, p * (args.layers - 1) + 1))), None)
    if period is None:
        raise SystemExit(f"error: no launch pattern repeats over the last {args.layers} layers")
    layer = names[-period:]
    if "paged_attention_residual" not in layer:
        print("note: the last step ran the unfused attention (more than 256 keys: use --new 64 for the fused path)")
    label = [n if layer.count(n) == 1 else f"{n}#{layer[:i + 1].count(n)}" for i, n in enumerate(layer)]
    kinds = label
    step = [(label[i % period],) + tuple(r[1:]) for i, r in enumerate(rows[-args.layers * period:])]
    t0 = step[0][2]
    print(f"{len(step)} launches, {(step[-1][7] - t0) / 1000:.1f} us from the first start to the last end")
    us = lambda t: (t - t0) / 1000
    for name, blocks, s0, s1, w0, w1, m1, e1 in step[: args.show]:
        wait = f"wait {us(w0):7.2f}-{us(w1):7.2f}" if w1 else " " * 20
        print(f"  {name:26s} {blocks:4d} blocks  start {us(s0):7.2f}-{us(s1):7.2f}  {wait}  end {us(e1):7.2f}")
    by = collections.defaultdict(list)
    for prev, cur in zip(step, step[1:]):
        name, _, s0, _, _, w1, m1, e1 = cur
        pe = prev[7]
        nan = float("nan")
        by[name].append(((e1 - pe) / 1000, (s0 - pe) / 1000, (w1 - pe) / 1000 if w1 else nan,
                         (e1 - w1) / 1000 if w1 else nan, (m1 - w1) / 1000 if m1 and w1 else nan))
    # The step's ends: its embedding before the layers, the vocabulary's projection and pick after.
    before = [r for r in outside if r[0] == "embedding" and r[7] <= step[0][2] + 50_000]
    after = [r for r in outside if r[0] == "project_argmax" and r[2] >= step[-1][2]]
    if before and after:
        emb, head = before[-1], after[0]
        print(f"  embedding: start {us(emb[2]):7.2f}  end {us(emb[7]):7.2f}")
        print(f"  project_argmax {head[1]} blocks: start {us(head[2]):7.2f}-{us(head[3]):7.2f}  wait "
              f"{us(head[4]):7.2f}-{us(head[5]):7.2f}  end {us(head[7]):7.2f}  (the last layer ends {us(step[-1][7]):7.2f})")
        print(f"  step: {(head[7] - emb[2]) / 1000:.1f} us from the embedding's start to the pick")
    print(f"{'kernel':26s} {'since-prev':>10s} {'start':>7s} {'wait':>7s} {'after-wait':>10s} {'to-staged':>9s}")
    for name in kinds:
        v = by[name]
        mean = lambda j: statistics.mean(x[j] for x in v)
        print(f"{name:26s} {mean(0):10.2f} {mean(1):7.2f} {mean(2):7.2f} {mean(3):10.2f} {mean(4):9.2f}")


if __name__ == "__main__":
    main()
