#!/usr/bin/env python3
"""Tables and charts of the experiments from run_one.py's JSONL rows (issue 15).

    report.py RESULTS.jsonl... [--efficiency EFF.jsonl] [--sizes SIZES.jsonl] [--base-loss X]
              [--svg OUT.svg] [--curves OUT.svg] [--rank-curves OUT.svg] [--all-curves OUT.svg]
              [--runs-dir DIR]
              [--label "CPU, 6.9M base"]

Prints markdown tables to stdout, one section per task found in the RESULTS files (the quality
tables leave speed out: those runs may share the machine, see run.sh's JOBS): metric vs rank
(LoRA q,v), vs targets (r=8), vs alpha (r=8 q,v), DoRA and rsLoRA, a dropout mask per projection
against one per input (run.sh's masks set; those runs stay out of the other tables), the headline (the best run
with <= 1% trainable parameters against full fine-tuning); a configuration run with several seeds
shows their mean and standard deviation. Then (from --efficiency rows) full vs LoRA efficiency on
one model, and (from --sizes, efficiency.sh's rows) full vs LoRA across model sizes. --svg writes
a chart of the metric against trainable parameters (log x) with full fine-tuning (and the base
model, --base-loss, KJV) as horizontal lines; --curves the training loss curves (moving average
of 20 steps) of full fine-tuning and LoRA q,v / all-linear at r=8 from the runs' metrics.jsonl in
--runs-dir; --rank-curves those of full fine-tuning and of LoRA q,v at every rank run (alpha 2r);
--all-curves those of every run in the rows, labelled with their learning rates (sets such as
rank64 that vary it).
With several tasks, the chart files get the task's name before ".svg".
Standard library only.
"""
import argparse
import json
import math
import os
import statistics
from xml.sax.saxutils import escape

SHORT = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o"}


ALL_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # a Llama's, spelled out (rows before
# `--targets all-linear,lm_head` existed)


def tgt(t):
    if t in ("all", "all-linear"):
        return t
    if t.startswith(ALL_LINEAR + ","):
        return "all-linear," + t[len(ALL_LINEAR) + 1:]
    return ",".join(SHORT.get(x, x) for x in t.split(","))


METHOD = {"lora": "LoRA", "dora": "DoRA", "rslora": "rsLoRA", "pissa": "PiSSA", "olora": "OLoRA", "bitfit": "BitFit"}
VARIANTS = ("dora", "rslora", "pissa", "olora")  # LoRA of another kind or init, shown next to plain LoRA


def split_vocab(targets):
    """('q,v', 'lm_head') for 'q,v,lm_head': the blocks' targets and the embedding / output layers."""
    names = targets.split(",")
    vocab = [n for n in names if n in ("embed_tokens", "lm_head")]
    return ",".join(n for n in names if n not in vocab), ",".join(vocab)


def targets_of(r):
    """The adapted modules, with the ranks and alphas of rank_pattern / alpha_pattern where given."""
    own = {}
    for key, what in (("rank_pattern", "r"), ("alpha_pattern", "α")):
        for k, v in sorted((r.get(key) or {}).items()):
            own.setdefault(k, []).append("%s=%g" % (what, v))
    text = tgt(r["targets"])
    for k, v in own.items():
        text = text.replace(k, "%s (%s)" % (k, ", ".join(v)))
    if r.get("layers_to_transform"):
        text += " in blocks " + ",".join(str(i) for i in r["layers_to_transform"])
    return text


def per_input(r):
    """A run with one LoRA dropout mask per input (train --dropout-per-input)."""
    return r.get("dropout_masks") == "per-input"


def plus(r):
    """LoRA+'s ratio of B's learning rate to A's (train --loraplus-lr-ratio), or None."""
    return r.get("loraplus_lr_ratio")


def label(r):
    if r["method"] == "full":
        return "full fine-tuning"
    if r["method"] == "bitfit":
        return "BitFit (biases only)"
    return "%s r=%d α=%g %s%s%s" % (METHOD.get(r["method"], r["method"]), r["rank"], r["alpha"], targets_of(r),
                                    ", one dropout mask per input" if per_input(r) else "",
                                    ", LoRA+ ηB/ηA = %g, lr %s" % (plus(r), short_lr(r["lr"])) if plus(r) else "")


def merge_seeds(rows):
    """One row per configuration: the metric's mean over its seeds (metric_sd, seeds added). A seed
    that appears twice (the quality and the seeds sets both run seed 1) counts once: its first row."""
    groups = {}
    for r in rows:
        g = groups.setdefault((r["method"], r["rank"], r["alpha"], targets_of(r), per_input(r), plus(r),
                               r["lr"] if plus(r) else None), {})
        g.setdefault(r["seed"], r)
    out = []
    for g in groups.values():
        g = sorted(g.values(), key=lambda r: r["seed"])
        m = dict(g[0])
        vals = [r["metric"] for r in g]
        m["metric"] = statistics.mean(vals)
        m["metric_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
        m["seeds"] = len(vals)
        for k in ("eval_loss", "final_train_loss"):
            if all(r.get(k) is not None for r in g):
                m[k] = statistics.mean(r[k] for r in g)
        out.append(m)
    return out


def load(path):
    return [json.loads(l) for l in open(path) if l.strip()]


def fmt_int(n):
    return "{:,}".format(n)


def rel(x, ref):
    return "%+.1f%%" % (100.0 * (x - ref) / ref) if ref else "–"


def metric_cell(r):
    v = ("%.4f" if not r["higher_is_better"] else "%.3f") % r["metric"]
    if r.get("seeds", 1) > 1:
        v += " ± %.3f (%d seeds)" % (r["metric_sd"], r["seeds"])
    return v


def memory_cell(r):
    if r.get("peak_gib") is not None:
        return "%.2f GiB" % r["peak_gib"]
    return "%.0f MiB" % r["peak_mib"] if r.get("peak_mib") is not None else ""


def table(rows, full, head, key):
    generated = any(r["higher_is_better"] for r in rows)
    name = "held-out loss" if not generated else rows[0]["metric_name"].split(" (")[0]
    out = ["| %s | trainable | %% of all | %s | vs full |%s final train loss | peak memory |" % (
               head, name, " completion loss |" if generated else ""),
           "| --- | --- | --- | --- | --- |%s --- | --- |" % (" --- |" if generated else "")]
    for r in rows:
        out.append("| %s | %s | %.3f%% | %s | %s |%s %.3f | %s |" % (
            key(r), fmt_int(r["trainable_params"]), r["trainable_pct"], metric_cell(r),
            rel(r["metric"], full["metric"]) if full else "",
            (" %.4f |" % r["eval_loss"]) if generated else "", r["final_train_loss"], memory_cell(r)))
    return "\n".join(out)


def sizes_table(rows):
    """efficiency.sh's rows: per shape, full fine-tuning and each LoRA configuration."""
    order = []
    for r in rows:
        if r["model"] not in order:
            order.append(r["model"])
    out = ["| model | run | trainable | tokens/s | vs full | step ms | peak memory | vs full |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for shape in order:
        g = [r for r in rows if r["model"] == shape]
        full = next((r for r in g if r.get("method") == "full" and "error" not in r), None)
        mem = lambda r: r.get("peak_gib") or (r.get("peak_rss_mib", 0) / 1024)
        mem_txt = lambda r: "%.2f GiB" % r["peak_gib"] if r.get("peak_gib") else "%.0f MiB RSS" % r.get("peak_rss_mib", 0)
        for r in g:
            name = "full fine-tuning" if r.get("method") == "full" else "LoRA r=%s %s" % (r.get("rank"), tgt(r.get("targets", "?")))
            if "error" in r:
                out.append("| %s | %s | | failed: %s | | | | |" % (shape, name, r["error"][:80].replace("|", "/")))
                continue
            out.append("| %s | %s | %s | %.0f | %s | %.1f | %s | %s |" % (
                shape, name, fmt_int(r["trainable"]), r["tokens_per_s"],
                "%.2f×" % (r["tokens_per_s"] / full["tokens_per_s"]) if full else "–", r["step_ms"], mem_txt(r),
                "%.2f×" % (mem(r) / mem(full)) if full and mem(full) else "–"))
    return "\n".join(out)


def efficiency(rows):
    """Median over repeats of each configuration."""
    groups = {}
    for r in rows:
        groups.setdefault(label(r).replace(" α=%g" % (r["alpha"] or 0), ""), []).append(r)
    full = groups.get("full fine-tuning")
    out = ["| run | trainable | runs | tokens/s (median) | vs full | step ms | peak RSS MiB | vs full | host load |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    ft = statistics.median(x["tokens_per_s"] for x in full) if full else None
    fm = statistics.median(x["peak_mib"] for x in full) if full else None
    order = sorted(groups.items(), key=lambda kv: (kv[1][0]["method"] != "full", kv[1][0]["targets"] != "q_proj,v_proj",
                                                    kv[1][0]["rank"] or 0))
    for name, g in order:
        t = statistics.median(x["tokens_per_s"] for x in g)
        m = statistics.median(x["peak_mib"] for x in g)
        out.append("| %s | %s | %d | %.0f | %s | %.0f | %.0f | %s | %s |" % (
            name, fmt_int(g[0]["trainable_params"]), len(g), t, "%.2f×" % (t / ft) if ft else "",
            statistics.median(x["step_ms"] for x in g), m, "%.2f×" % (m / fm) if fm else "",
            "–".join("%.1f" % x for x in sorted({min(y["host_load"] for y in g), max(y["host_load"] for y in g)}))))
    return "\n".join(out)


def svg_scatter(rows, full, base_loss, path, title, ylabel):
    W, H, L, R, T, B = 760, 460, 70, 200, 40, 50
    pts = [r for r in rows if r["method"] != "full"]
    xs = [math.log10(r["trainable_params"]) for r in rows]
    ys = [r["metric"] for r in rows] + ([base_loss] if base_loss else [])
    x0, x1 = math.floor(min(xs) * 2) / 2, math.ceil(max(xs) * 2) / 2
    y0, y1 = math.floor(min(ys) * 10) / 10 - 0.05, math.ceil(max(ys) * 10) / 10 + 0.05
    X = lambda v: L + (math.log10(v) - x0) / (x1 - x0) * (W - L - R)
    Y = lambda v: T + (y1 - v) / (y1 - y0) * (H - T - B)
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="22" font-size="14" font-weight="bold">%s</text>' % (L, escape(title))]
    for e in range(int(x0 * 2), int(x1 * 2) + 1):
        v = 10 ** (e / 2)
        xv = X(v)
        o.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (xv, T, xv, H - B))
        txt = ("%.0fk" % (v / 1e3)) if v < 1e6 else ("%.1fM" % (v / 1e6))
        o.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (xv, H - B + 16, txt))
    yt = y0 + 0.05
    k = 0
    step = 0.1 if y1 - y0 < 1.5 else 0.25
    v = math.ceil(y0 / step) * step
    while v <= y1 + 1e-9:
        o.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/>' % (L, Y(v), W - R, Y(v)))
        o.append('<text x="%d" y="%.1f" text-anchor="end">%.2f</text>' % (L - 6, Y(v) + 4, v))
        v += step
    o.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>' % (L, T, W - L - R, H - T - B))
    o.append('<text x="%d" y="%d" text-anchor="middle">trainable parameters (log scale)</text>' % ((L + W - R) // 2, H - 12))
    o.append('<text transform="translate(16,%d) rotate(-90)" text-anchor="middle">%s</text>' % ((T + H - B) // 2, escape(ylabel)))
    for val, color, name in ((full["metric"] if full else None, "#c00", "full fine-tuning"), (base_loss, "#888", "base model, no tuning")):
        if val is None or not (y0 <= val <= y1):
            continue
        o.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s" stroke-dasharray="6,4" stroke-width="1.5"/>' % (L, Y(val), W - R, Y(val), color))
        # inside the plot, above the line (the legend holds the right margin)
        o.append('<text x="%d" y="%.1f" fill="%s">%s %.3f</text>' % (L + 6, Y(val) - 5, color, escape(name), val))
    if full:
        o.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#c00" stroke-dasharray="2,3"/>' % (X(full["trainable_params"]), T, X(full["trainable_params"]), H - B))
        o.append('<text x="%.1f" y="%d" text-anchor="end" fill="#c00" font-size="10">1%% of %s →</text>' % (X(full["trainable_params"] / 100) - 4, T + 12, "params"))
        o.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#999" stroke-dasharray="1,3"/>' % (X(full["trainable_params"] / 100), T, X(full["trainable_params"] / 100), H - B))
    colors = {"q,v": "#1f77b4", "q": "#2ca02c", "v": "#9467bd", "q,k,v,o": "#ff7f0e", "all-linear": "#8c564b"}
    vocab_marks = {"lm_head": "▲", "embed_tokens": "◆", "embed_tokens,lm_head": "■"}  # the blocks' colour, this shape
    for r in pts:
        blocks, vocab = split_vocab(tgt(r["targets"]))
        c = "#e377c2" if r["method"] in VARIANTS + ("bitfit",) else colors.get(blocks, "#333")
        x, y = X(r["trainable_params"]), Y(r["metric"])
        if vocab == "lm_head":
            shape = '<polygon points="%.1f,%.1f %.1f,%.1f %.1f,%.1f" fill="%s"/>' % (x, y - 6, x - 6, y + 5, x + 6, y + 5, c)
        elif vocab == "embed_tokens":
            shape = '<polygon points="%.1f,%.1f %.1f,%.1f %.1f,%.1f %.1f,%.1f" fill="%s"/>' % (x, y - 6, x + 6, y, x, y + 6, x - 6, y, c)
        elif vocab or r["method"] == "dora":
            shape = '<rect x="%.1f" y="%.1f" width="9" height="9" fill="%s"/>' % (x - 4.5, y - 4.5, c)
        else:
            shape = '<circle cx="%.1f" cy="%.1f" r="%d" fill="%s" fill-opacity="0.85"/>' % (x, y, 5, c)
        o.append(shape + "<title>%s: %s trainable, metric %.4f</title>" % (escape(label(r)), fmt_int(r["trainable_params"]), r["metric"]))
    # q,v rank sweep (alpha = 2r) joined by a line, labelled with r
    sweep = sorted([r for r in pts if r["method"] == "lora" and r["targets"] == "q_proj,v_proj" and r["alpha"] == 2 * r["rank"]],
                   key=lambda r: r["trainable_params"])
    if len(sweep) > 1:
        o.append('<polyline fill="none" stroke="#1f77b4" stroke-width="1.2" points="%s"/>' % " ".join(
            "%.1f,%.1f" % (X(r["trainable_params"]), Y(r["metric"])) for r in sweep))
    for r in sweep:
        o.append('<text x="%.1f" y="%.1f" font-size="10" fill="#1f77b4">r=%d</text>' % (X(r["trainable_params"]) + 6, Y(r["metric"]) - 6, r["rank"]))
    for r in pts:  # the other points: what differs from r=8, alpha 16, q,v
        if r in sweep:
            continue
        txt = (label(r) if r["method"] == "bitfit" else METHOD[r["method"]] if r["method"] in VARIANTS
               else ("α=%g" % r["alpha"] if r["alpha"] != 2 * r["rank"] else targets_of(r)))
        o.append('<text x="%.1f" y="%.1f" font-size="10" fill="#333">%s</text>' % (X(r["trainable_params"]) + 7, Y(r["metric"]) + 4, escape(txt)))
    ly = T + 80
    o.append('<text x="%d" y="%d" font-weight="bold">LoRA targets (r=8)</text>' % (W - R + 6, ly))
    for i, (name, c) in enumerate(list(colors.items()) + ([("DoRA q,v", "#e377c2")] if any(r["method"] == "dora" for r in pts) else [])):
        y = ly + 18 * (i + 1)
        o.append('<circle cx="%d" cy="%d" r="5" fill="%s"/><text x="%d" y="%d">%s</text>' % (W - R + 12, y - 4, c, W - R + 22, y, escape(name)))
    o.append('<text x="%d" y="%d" font-size="10" fill="#555">q,v line: rank sweep, α = 2r</text>' % (W - R + 6, ly + 18 * 8))
    shown = sorted({split_vocab(tgt(r["targets"]))[1] for r in pts} - {""})
    for i, vocab in enumerate(shown):  # the marks of the runs that also adapt the embedding / output layer
        o.append('<text x="%d" y="%d" font-size="11">%s + %s</text>' % (W - R + 6, ly + 18 * (9 + i), vocab_marks.get(vocab, "■"), escape(vocab)))
    o.append("</svg>")
    open(path, "w").write("\n".join(o) + "\n")


def svg_curves(series, path, title):
    R = max(200, 7 * max(len(name) for name, _, _ in series) + 40)  # room for the legend's names
    W, H, L, T, B = 560 + R, 420, 60, 40, 45
    allx = [x for _, _, pts in series for x, _ in pts]
    ally = [y for _, _, pts in series for _, y in pts]
    x1 = max(allx)
    step = next(s for s in (0.25, 0.5, 1.0, 2.0, 5.0) if (max(ally) - min(ally)) / s <= 12)  # <= ~12 grid lines
    y0, y1 = math.floor(min(ally) / step) * step, math.ceil(max(ally) / step) * step
    X = lambda v: L + v / x1 * (W - L - R)
    Y = lambda v: T + (y1 - v) / (y1 - y0) * (H - T - B)
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="22" font-size="14" font-weight="bold">%s</text>' % (L, escape(title))]
    v = y0
    while v <= y1 + 1e-9:
        o.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/><text x="%d" y="%.1f" text-anchor="end">%.2f</text>' % (L, Y(v), W - R, Y(v), L - 6, Y(v) + 4, v))
        v += step
    for s in range(0, int(x1) + 1, 50):
        o.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (X(s), H - B + 16, s))
    o.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>' % (L, T, W - L - R, H - T - B))
    o.append('<text x="%d" y="%d" text-anchor="middle">step</text>' % ((L + W - R) // 2, H - 10))
    o.append('<text transform="translate(16,%d) rotate(-90)" text-anchor="middle">training loss (20-step moving average)</text>' % ((T + H - B) // 2))
    for i, (name, c, pts) in enumerate(series):
        o.append('<polyline fill="none" stroke="%s" stroke-width="1.6" points="%s"/>' % (c, " ".join("%.1f,%.1f" % (X(x), Y(y)) for x, y in pts)))
        o.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/><text x="%d" y="%d">%s</text>' % (
            W - R + 8, T + 20 + 18 * i, W - R + 26, T + 20 + 18 * i, c, W - R + 30, T + 24 + 18 * i, escape(name)))
    o.append("</svg>")
    open(path, "w").write("\n".join(o) + "\n")


TASK_TITLE = {"kjv": "KJV, held-out books", "spam": "SpamAssassin spam/ham", "pos": "Brown POS tags"}
ALL_COLOURS = ["#c00", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf"]
RANK_COLOURS = ["#c7dcef", "#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b", "#041a3d"]  # light: small r


def short_lr(lr):
    m, e = ("%e" % lr).split("e")
    return "%ge%d" % (float(m), int(e))


def curve_series(runs_dir, runs, name=label):
    """(name(row), colour, [(step, 20-step moving average of the training loss)]) for each (row,
    colour) whose run folder in runs_dir still has its metrics.jsonl."""
    series = []
    for r, colour in runs:
        if not r:
            continue
        mpath = os.path.join(runs_dir, os.path.basename(r["run_dir"]), "metrics.jsonl")
        if not os.path.exists(mpath):
            continue
        ls = [json.loads(l) for l in open(mpath) if '"tokens_per_second"' in l]
        pts = []
        for i in range(len(ls)):
            w = ls[max(0, i - 19):i + 1]
            pts.append((ls[i]["step"], sum(x["loss"] for x in w) / len(w)))
        series.append((name(r), colour, pts))
    return series


def task_report(task, rows, a, multi):
    runs = rows  # one row a run (merge_seeds below averages the seeds)
    full_rows = [r for r in rows if r["method"] == "full"]
    rows = merge_seeds(rows)
    full = next((r for r in rows if r["method"] == "full"), None)
    # PEFT's masks and one lr; per input and LoRA+ below
    lora = [r for r in rows if r["method"] == "lora" and not per_input(r) and not plus(r)]
    qv = lambda r: r["targets"] == "q_proj,v_proj"
    hib = rows[0]["higher_is_better"]
    print("## %s%s\n" % (TASK_TITLE.get(task, task), " (%s)" % a.label if a.label else ""))
    print("Metric: %s (%s is better).\n" % (rows[0]["metric_name"], "higher" if hib else "lower"))
    print("### By rank (LoRA on q,v, α = 2r)\n")
    print(table(([full] if full else []) + sorted([r for r in lora if qv(r) and r["alpha"] == 2 * r["rank"]], key=lambda r: r["rank"]),
                full, "run", label))
    print("\n### By adapted weights (r = 8, α = 16)\n")
    print(table(sorted([r for r in lora if r["rank"] == 8 and r["alpha"] == 16], key=lambda r: r["trainable_params"]), full, "targets",
                lambda r: targets_of(r)))
    print("\n### By alpha (r = 8, q,v)\n")
    print(table(sorted([r for r in lora if r["rank"] == 8 and qv(r)], key=lambda r: r["alpha"]), full, "α",
                lambda r: "%g (%s)" % (r["alpha"], "r" if r["alpha"] == 8 else "%gr" % (r["alpha"] / 8))))
    other = [r for r in rows if r["method"] in VARIANTS + ("bitfit",)]
    if other:
        # plain LoRA of each configuration a variant ran in, then the variants
        shown = {(r["rank"], r["alpha"], r["targets"]) for r in other if r["method"] != "bitfit"} or {(8, 16, "q_proj,v_proj")}
        plain = [r for r in lora if (r["rank"], r["alpha"], r["targets"]) in shown]
        print("\n### DoRA, rsLoRA, PiSSA, OLoRA and BitFit next to LoRA\n")
        print(table(sorted(plain, key=lambda r: r["trainable_params"]) + other, full, "run", label))
    masked = [r for r in rows if per_input(r)]
    if masked:  # each configuration with a mask per projection, then with one per input
        pairs = []
        for m in sorted(masked, key=lambda r: r["trainable_params"]):
            pairs += [r for r in rows if not per_input(r) and (r["method"], r["rank"], r["alpha"], r["targets"]) ==
                      (m["method"], m["rank"], m["alpha"], m["targets"])] + [m]
        print("\n### Dropout masks: one per projection (PEFT's) against one per input\n")
        print(table(pairs, full, "run", label))
    boosted = [r for r in rows if plus(r)]
    if boosted:  # each configuration plain, then at each ratio
        shown = {(r["rank"], r["alpha"], r["targets"]) for r in boosted}
        plain = [r for r in lora if (r["rank"], r["alpha"], r["targets"]) in shown]
        print("\n### LoRA+: B's learning rate a multiple of A's\n")
        print(table(sorted(plain + boosted, key=lambda r: (r["trainable_params"], plus(r) or 0, -r["lr"])), full, "run", label))
    small = [r for r in rows if r["method"] != "full" and r["trainable_pct"] <= 1.0]
    if small and full:
        best = (max if hib else min)(small, key=lambda r: r["metric"])
        gap = ((full["metric"] - best["metric"]) if hib else (best["metric"] - full["metric"])) / (full["metric"] or 1e-12)
        print("\nheadline: best run with ≤ 1%% trainable: %s, %s trainable (%.3f%%), %s %s vs full %s: %s (%s the 1%% bar)"
              % (label(best), fmt_int(best["trainable_params"]), best["trainable_pct"], rows[0]["metric_name"].split(" (")[0],
                 metric_cell(best), metric_cell(full), rel(best["metric"], full["metric"]),
                 "within" if gap <= 0.01 else "misses"))
    suffix = lambda path: path.replace(".svg", "-%s.svg" % task) if multi else path
    if a.svg and full:
        svg_scatter(rows, full, a.base_loss if task == "kjv" else None, suffix(a.svg),
                    "%s: %s vs trainable parameters%s" % (TASK_TITLE.get(task, task), rows[0]["metric_name"].split(" (")[0],
                                                         " (%s)" % a.label if a.label else ""),
                    "%s (%s is better)" % (rows[0]["metric_name"].split(" (")[0], "higher" if hib else "lower"))
    full_run = full_rows[0] if full_rows else None
    heading = " (%s)" % a.label if a.label else ""
    if a.curves and a.runs_dir:
        series = curve_series(a.runs_dir, [(full_run, "#c00"),
            (next((x for x in lora if x["rank"] == 8 and x["alpha"] == 16 and qv(x)), None), "#1f77b4"),
            (next((x for x in lora if x["rank"] == 8 and x["targets"] == "all-linear"), None), "#8c564b"),
            (next((x for x in lora if x["rank"] == 64 and qv(x)), None), "#17becf")])
        if series:
            svg_curves(series, suffix(a.curves), "%s training loss: full fine-tuning vs LoRA%s"
                       % (TASK_TITLE.get(task, task), heading))
    if a.rank_curves and a.runs_dir:
        by_rank = sorted([x for x in lora if qv(x) and x["alpha"] == 2 * x["rank"]], key=lambda x: x["rank"])
        series = curve_series(a.runs_dir, [(full_run, "#c00")] + list(zip(by_rank, RANK_COLOURS)))
        if series:
            svg_curves(series, suffix(a.rank_curves), "%s: training loss by rank (LoRA q,v, α = 2r)%s"
                       % (TASK_TITLE.get(task, task), heading))
    if a.all_curves and a.runs_dir:
        ordered = [r for r in runs if r["method"] == "full"][:1] + [r for r in runs if r["method"] != "full"]
        series = curve_series(a.runs_dir, list(zip(ordered, ALL_COLOURS)), lambda r: "%s, lr %s" % (label(r), short_lr(r["lr"])))
        if series:
            svg_curves(series, suffix(a.all_curves), "%s: training loss of each run%s" % (TASK_TITLE.get(task, task), heading))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("--efficiency")
    ap.add_argument("--sizes", help="efficiency.sh's rows (full vs LoRA across model sizes)")
    ap.add_argument("--base-loss", type=float, help="KJV: the base model's held-out loss (a line in the chart)")
    ap.add_argument("--svg")
    ap.add_argument("--curves")
    ap.add_argument("--rank-curves")
    ap.add_argument("--all-curves")
    ap.add_argument("--runs-dir")
    ap.add_argument("--label", default="", help="e.g. 'CPU, 6.9M base': in the headings and chart titles")
    a = ap.parse_args()
    rows = [r for path in a.results for r in load(path) if r.get("metric") is not None]
    tasks = []
    for r in rows:
        if r["task"] not in tasks:
            tasks.append(r["task"])
    for t in tasks:
        task_report(t, [r for r in rows if r["task"] == t], a, len(tasks) > 1)
        print()
    if a.efficiency:
        print("### Efficiency (one model)\n")
        print(efficiency(load(a.efficiency)))
    if a.sizes:
        print("\n### Efficiency across model sizes (efficiency.sh)\n")
        print(sizes_table(load(a.sizes)))


if __name__ == "__main__":
    main()
