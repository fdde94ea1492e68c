#!/usr/bin/env python3
"""Train and evaluate one configuration of the experiments (issue 15); append one JSON row.

    run_one.py --data-dir DIR --results FILE.jsonl --method full|lora|dora|rslora|pissa|olora|bitfit
               [--task NAME] [--rank 8] [--alpha 16] [--targets q_proj,v_proj] [--rank-pattern JSON] [--alpha-pattern JSON]
               [--seed 1]
               [--steps 200] [--batch 8] [--seq-len L] [--pad-to-multiple-of 1] [--lr 3e-3] [--warmup 10]
               [--dropout 0.05] [--device cpu|cuda[:N]] [--lowrank build/lowrank]
               [--model models/base] [--work-dir out/experiments] [--name NAME] [--keep]
               [--tag TAG] [--no-eval] [--eval-limit N] [--skip-done] [--claim]

DIR holds train.jsonl and eval.jsonl (kjv_data.py, spam_data.py, pos_data.py make them) and, for
a task scored on generated text, task.json and eval_prompts.jsonl. The run is `lowrank train` (no
in-training eval, so that the training process's peak memory and speed are the training step's
alone) under /usr/bin/time -v, then `lowrank eval` of the result (the adapter on the base model,
or the fully fine-tuned model folder) on eval.jsonl (eval_loss). Without task.json (KJV) that loss
is the metric; with one, the metric is task.json's: `lowrank generate --greedy` on
eval_prompts.jsonl, scored by score.py (accuracy, tag_f1); --eval-limit N takes the first N lines of
both held-out files (a fixed sample: they are shuffled) for the eval and the generation;
the generated lines stay in RUN_DIR/generated.jsonl.
task.json also gives the defaults of --task and --seq-len. Methods:
  full    train --full (every weight)
  lora    train --rank R --alpha A --targets T
  dora    lora + --use-dora
  rslora  lora + --rslora (scale alpha/sqrt(r) instead of alpha/r)
  pissa   lora + --init pissa (A, B from the weight's top r singular directions, removed from W)
  olora   lora + --init olora (A, B from a QR of the weight, removed from W)
  bitfit  train --targets none --bias all (every bias of the linear layers, nothing else: BitFit);
          needs a base with biases (lowrank refuses one without)
Row fields: task, model (the base folder's name), method, rank, alpha, rank_pattern and alpha_pattern
(null unless given), loraplus_lr_ratio (LoRA+: B's lr over A's; null unless given) and
loraplus_lr_embedding (its lr for embedding adapters; null: train's default),
layers_to_transform (the blocks adapted; null: all), targets, seed, metric (the
task's), metric_name, higher_is_better, eval_loss (lowrank eval on eval.jsonl; for
prompt/completion data the loss of the completions), eval_tokens, score (score.py's details,
generated tasks only), trainable_params, total_params (the trainer's "all params": base + adapter, PEFT's count), base_params, trainable_pct, peak_mib (max RSS of the training
process; on a GPU also peak_gib, the driver's peak reserved memory), saved_bytes (the
.safetensors the run wrote: the adapter, or the whole model for full fine-tuning), step_ms (median step time,
first 5 steps excluded), tokens_per_s (tokens of the steps after the first 5 / their time),
steps_s (every step's time summed: against step_ms × steps it shows slow steps, such as those that
meet a new batch shape on a GPU; against train_wall_s the setup), train_wall_s, wall_s (train + eval processes), train_cpu_s (user + system CPU time of the
training process, setup included), tokens_per_cpu_s (all steps' tokens / train_cpu_s: the speed
to compare on a shared machine), final_train_loss, device, steps, batch, seq_len,
pad_to_multiple_of (train --pad-to-multiple-of, by default 8 on a GPU and 1 on the CPU; in the run folder's name when > 1), lr, warmup, dropout, threads, date, host_load (1-minute load average before the run), tag, run_dir.
Standard library only.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time


def sh(cmd, env):
    """Runs cmd; returns (stdout, stderr); exits with the command's stderr on failure."""
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit("error: %s exited with %d" % (" ".join(cmd[:3]), p.returncode))
    return p.stdout, p.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--method", required=True,
                    choices=["full", "lora", "dora", "rslora", "pissa", "olora", "bitfit"])
    ap.add_argument("--task", default=None, help="default: task.json's task, else kjv")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=None, help="default 2*rank")
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--rank-pattern", default=None,
                    help='train --rank-pattern, PEFT\'s rank_pattern as JSON: \'{"lm_head": 32}\' (in the run\'s name)')
    ap.add_argument("--alpha-pattern", default=None,
                    help='train --alpha-pattern, PEFT\'s alpha_pattern as JSON: \'{"lm_head": 64}\' (in the run\'s name)')
    ap.add_argument("--layers", default=None,
                    help="train --layers-to-transform: the blocks to adapt, e.g. 3,4,5 (in the run's name)")
    ap.add_argument("--loraplus-ratio", type=float, default=None,
                    help="train --loraplus-lr-ratio: B's lr over A's (LoRA+; in the run's name)")
    ap.add_argument("--loraplus-lr-embedding", type=float, default=None,
                    help="train --loraplus-lr-embedding: the lr of embedding adapters under LoRA+ (in the run's name)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=None, help="default: task.json's seq_len, else 128")
    ap.add_argument("--pad-to-multiple-of", type=int, default=None,
                    help="train --pad-to-multiple-of: batch lengths rounded up to a multiple (fewer GPU shapes); "
                         "default train's: 8 on a GPU, 1 on the CPU")
    ap.add_argument("--lr", type=float, default=None, help="default 1e-3 for full, 3e-3 otherwise")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--dropout-per-input", action="store_true",
                    help="train --dropout-per-input: one dropout mask per distinct input (q, k, v share one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lowrank", default="build/lowrank")
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--work-dir", default="out/experiments")
    ap.add_argument("--name", default=None, help="run folder name (default: from the configuration)")
    ap.add_argument("--keep", action="store_true", help="keep the adapter / model (metrics.jsonl is always kept)")
    ap.add_argument("--tag", default="", help="appended to the run folder's name (e.g. eff1: a repeat)")
    ap.add_argument("--no-eval", action="store_true", help="speed and memory only: no eval (metric null)")
    ap.add_argument("--eval-limit", type=int, default=0, help="generated tasks: score the first N held-out prompts only (0: all)")
    ap.add_argument("--skip-done", action="store_true", help="do nothing if RESULTS has a row of this run folder")
    ap.add_argument("--claim", action="store_true", help="do nothing if another worker has claimed this run "
                    "(the claim is the folder RUN_DIR.claim; run.sh clears the claims when it starts)")
    a = ap.parse_args()
    task_path = os.path.join(a.data_dir, "task.json")
    task = json.load(open(task_path)) if os.path.exists(task_path) else None
    a.task = a.task or (task["task"] if task else "kjv")
    a.seq_len = a.seq_len or (task.get("seq_len", 128) if task else 128)
    if a.pad_to_multiple_of is None:  # train's default, passed on so that the row records it
        a.pad_to_multiple_of = min(8, a.seq_len) if a.device.startswith("cuda") else 1

    lora = a.method in ("lora", "dora", "rslora", "pissa", "olora")
    adapter = lora or a.method == "bitfit"  # the run writes an adapter folder (else a model folder)
    alpha = a.alpha if a.alpha is not None else 2.0 * a.rank
    rank_pattern = json.loads(a.rank_pattern) if a.rank_pattern else None
    alpha_pattern = json.loads(a.alpha_pattern) if a.alpha_pattern else None
    lr = a.lr if a.lr is not None else (1e-3 if a.method == "full" else 3e-3)
    name = a.name or ("%s-%s" % (a.task, a.method) + (
        "-r%d-a%g-%s" % (a.rank, alpha, a.targets.replace(",", "+").replace("_proj", "")) if lora else "")
        + ("".join("-%s-r%d" % (k.replace("_proj", ""), v) for k, v in sorted(rank_pattern.items()))
           if lora and rank_pattern else "")
        + ("".join("-%s-a%g" % (k.replace("_proj", ""), v) for k, v in sorted(alpha_pattern.items()))
           if lora and alpha_pattern else "")
        + ("-maskperinput" if lora and a.dropout_per_input else "")
        + ("-L%s" % a.layers.replace(",", "+") if lora and a.layers else "")
        + ("-plus%g" % a.loraplus_ratio if lora and a.loraplus_ratio else "")
        + ("-emb%g" % a.loraplus_lr_embedding if lora and a.loraplus_ratio and a.loraplus_lr_embedding else "")
        + "-s%d" % a.seed + ("-pad%d" % a.pad_to_multiple_of if a.pad_to_multiple_of > 1 else "")
        + ("-%s" % a.tag if a.tag else ""))
    run_dir = os.path.join(a.work_dir, name)
    if a.skip_done and os.path.exists(a.results):
        if any(json.loads(l).get("run_dir") == run_dir for l in open(a.results) if l.strip()):
            print("%s: already in %s, skipped" % (name, a.results), file=sys.stderr)
            return
    if a.claim:  # several workers share one list of runs: the first to make the claim folder runs it
        try:
            os.makedirs(a.work_dir, exist_ok=True)
            os.mkdir(run_dir + ".claim")
        except FileExistsError:
            print("%s: claimed by another worker, skipped" % name, file=sys.stderr)
            return
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(run_dir)), exist_ok=True)

    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see docs/quickstart.md: spinning OpenMP threads on few cores
    train = [a.lowrank, "train", "--model", a.model, "--data", os.path.join(a.data_dir, "train.jsonl"),
             "--out", run_dir, "--lr", repr(lr), "--warmup", str(a.warmup), "--schedule", "cosine",
             "--steps", str(a.steps), "--batch-size", str(a.batch), "--seq-len", str(a.seq_len),
             "--seed", str(a.seed), "--device", a.device, "--quiet"]
    train += ["--pad-to-multiple-of", str(a.pad_to_multiple_of)]
    if lora:
        train += ["--rank", str(a.rank), "--alpha", "%g" % alpha, "--targets", a.targets, "--dropout", repr(a.dropout)]
        if a.dropout_per_input:
            train.append("--dropout-per-input")
        if a.loraplus_ratio:
            train += ["--loraplus-lr-ratio", repr(a.loraplus_ratio)]
            if a.loraplus_lr_embedding:
                train += ["--loraplus-lr-embedding", repr(a.loraplus_lr_embedding)]
        if a.layers:
            train += ["--layers-to-transform", a.layers]
        if rank_pattern:
            train += ["--rank-pattern", json.dumps(rank_pattern)]
        if alpha_pattern:
            train += ["--alpha-pattern", json.dumps(alpha_pattern)]
        if a.method == "dora":
            train.append("--use-dora")
        if a.method == "rslora":
            train.append("--rslora")
        if a.method in ("pissa", "olora"):
            train += ["--init", a.method]
    elif a.method == "bitfit":
        train += ["--targets", "none", "--bias", "all"]
    else:
        train.append("--full")
    # /usr/bin/time -v measures the peak RSS and CPU time; without it (a GPU box may lack Debian's
    # 'time') those fields are null and the GPU's peak memory comes from metrics.jsonl
    time_v = ["/usr/bin/time", "-v"] if os.access("/usr/bin/time", os.X_OK) else []
    load = os.getloadavg()[0]
    t0 = time.time()
    _, err = sh(time_v + train, env)
    train_wall = time.time() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    peak_mib = int(m.group(1)) / 1024 if m else None
    # CPU time of the training process: on a shared machine, tokens per CPU-second is the fairer
    # speed to compare (wall-clock speed depends on what else runs)
    cpu_s = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", err)) or None
    m = re.search(r"trainable params: (\d+) \|\| all params: (\d+)", err)
    if m:
        trainable, total = int(m.group(1)), int(m.group(2))
    else:  # --full may not print the line: every parameter trains
        trainable = total = None

    steps = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if '"tokens_per_second"' in l]
    if len(steps) != a.steps:
        raise SystemExit("error: %s/metrics.jsonl: %d steps logged, expected %d" % (run_dir, len(steps), a.steps))
    timed = steps[5:] if len(steps) > 10 else steps
    dts = [s["tokens"] / s["tokens_per_second"] for s in timed]
    step_ms = 1000 * statistics.median(dts)
    tokens_per_s = sum(s["tokens"] for s in timed) / sum(dts)
    gib = [s["gpu_peak_reserved_gib"] for s in steps if "gpu_peak_reserved_gib" in s]

    eval_data = os.path.join(a.data_dir, "eval.jsonl")
    if a.eval_limit and not a.no_eval:  # the first N lines of the (shuffled) held-out files: a fixed sample
        for f in ("eval.jsonl", "eval_prompts.jsonl"):
            if os.path.exists(os.path.join(a.data_dir, f)):
                lines = open(os.path.join(a.data_dir, f), encoding="utf-8").readlines()[:a.eval_limit]
                open(os.path.join(run_dir, f), "w", encoding="utf-8").writelines(lines)
        eval_data = os.path.join(run_dir, "eval.jsonl")
    ev = [a.lowrank, "eval", "--data", eval_data, "--seq-len", str(a.seq_len),
          "--json", "--quiet", "--device", a.device]
    ev += ["--model", run_dir] if not adapter else ["--model", a.model, "--adapter", run_dir]
    res = {"loss": None, "tokens": None}
    scored = None
    if not a.no_eval:
        out, _ = sh(ev, env)
        res = json.loads(out.strip().splitlines()[-1])
        if task:  # greedy generation on the held-out prompts, scored
            prompts = os.path.join(run_dir if a.eval_limit else a.data_dir, "eval_prompts.jsonl")
            gen_out = os.path.join(run_dir, "generated.jsonl")
            gen = [a.lowrank, "generate", "--input", prompts, "--output", gen_out, "--greedy",
                   "--max-new-tokens", str(task["max_new_tokens"]), "--device", a.device]
            gen += ["--model", run_dir] if not adapter else ["--model", a.model, "--adapter", run_dir]
            sh(gen, env)
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            import score
            scored = score.score(task, [json.loads(l) for l in open(gen_out, encoding="utf-8") if l.strip()])
    wall = time.time() - t0

    base_out, _ = sh([a.lowrank, "inspect", a.model], env)
    m = re.search(r"parameters: (\d+)", base_out)
    base_params = int(m.group(1)) if m else None
    if trainable is None:
        trainable = total = base_params

    row = {
        "task": a.task, "model": os.path.basename(os.path.abspath(a.model)), "method": a.method,
        "rank": a.rank if lora else None, "alpha": alpha if lora else None,
        "rank_pattern": rank_pattern if lora else None, "alpha_pattern": alpha_pattern if lora else None,
        "loraplus_lr_ratio": a.loraplus_ratio if lora else None,
        "loraplus_lr_embedding": a.loraplus_lr_embedding if lora and a.loraplus_ratio else None,
        "layers_to_transform": [int(x) for x in a.layers.split(",")] if lora and a.layers else None,
        "targets": a.targets if lora else "biases" if a.method == "bitfit" else "all", "seed": a.seed,
        "metric": (round(scored["metric"], 6) if scored else
                   round(res["loss"], 6) if res["loss"] is not None and not task else None),
        "metric_name": task["metric_name"] if task else "held-out eval loss (nats/token, held-out books)",
        "higher_is_better": task["higher_is_better"] if task else False,
        "eval_loss": round(res["loss"], 6) if res["loss"] is not None else None, "eval_tokens": res["tokens"],
        "score": {k: round(v, 6) if isinstance(v, float) else v for k, v in scored.items() if k != "metric"} if scored else None,
        "trainable_params": trainable, "total_params": total, "base_params": base_params,
        "trainable_pct": round(100.0 * trainable / total, 4) if total else None,
        "peak_mib": round(peak_mib, 1) if peak_mib is not None else None,
        "step_ms": round(step_ms, 2), "tokens_per_s": round(tokens_per_s, 1),
        "steps_s": round(sum(s["tokens"] / s["tokens_per_second"] for s in steps), 3),
        "train_wall_s": round(train_wall, 1), "wall_s": round(wall, 1),
        "train_cpu_s": round(cpu_s, 1) if cpu_s else None,
        "tokens_per_cpu_s": round(sum(s["tokens"] for s in steps) / cpu_s, 1) if cpu_s else None,
        "final_train_loss": round(steps[-1]["loss"], 4),
        "device": a.device, "steps": a.steps, "batch": a.batch, "seq_len": a.seq_len,
        "pad_to_multiple_of": a.pad_to_multiple_of, "lr": lr,
        "warmup": a.warmup, "dropout": a.dropout if lora else None,
        "dropout_masks": ("per-input" if a.dropout_per_input else "per-projection") if lora else None,
        "threads": int(env["OMP_NUM_THREADS"]) if env.get("OMP_NUM_THREADS", "").isdigit() else os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host_load": round(load, 2), "tag": a.tag or None, "run_dir": run_dir,
    }
    if gib:
        row["peak_gib"] = round(max(gib), 3)
    # What the run writes for a user to keep: the adapter's safetensors, or the whole model's.
    row["saved_bytes"] = sum(os.path.getsize(os.path.join(run_dir, f)) for f in os.listdir(run_dir)
                             if f.endswith(".safetensors"))
    os.makedirs(os.path.dirname(os.path.abspath(a.results)), exist_ok=True)
    with open(a.results, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    if not a.keep:  # metrics.jsonl and generated.jsonl stay (loss curves, predictions); the weights go
        for f in os.listdir(run_dir):
            if f not in ("metrics.jsonl", "generated.jsonl"):
                path = os.path.join(run_dir, f)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


if __name__ == "__main__":
    main()
