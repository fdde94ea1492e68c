#!/usr/bin/env python3
"""Reference token ids from Hugging Face `tokenizers` for lowrank's tokenizer parity test.

Run (on a machine with `tokenizers` 0.23 and, optionally, `transformers` 5.x):

    python3 tests/reference/make_tokenizer_refs.py --data tests/data --out OUTDIR

It needs tests/data as built by scripts/fetch-test-data.sh (tokenizers/ and corpus/). It writes

    OUTDIR/refs_llama3.jsonl, refs_qwen3.jsonl, refs_llama2.jsonl, refs_gpt2.jsonl
        line 1: {"tokenizer", "versions", "docs", "corpus_bytes"}
        then one line per corpus document (sorted by file name):
        {"doc": name, "bytes": n, "ids": [...],            encode(text, add_special_tokens=False)
         "special": {"prefix": [...], "suffix": [...]}     encode(text, True) == prefix+ids+suffix
           or "ids_special": [...]                         (when it is not of that form),
         "decode": str        decode(ids), only present when it differs from the text,
         "decode_skip": str   decode(ids, skip_special_tokens=True), only when != decode(ids),
         "decode_special": str decode(ids_special), only when != decode(ids)}
    OUTDIR/refs_synthetic.jsonl  the same for the synthetic tokenizers of
                                tests/fixtures/tokenizer/synthetic.json (other components on a
                                real base) over a subset of the corpus; line 1 lists the variants
                                ({"variants": {name: "ok" | error}}), then one line per
                                (variant, document) with "variant" added
    OUTDIR/hf_timing.json       single-thread encode throughput (MB/s) per tokenizer, and the CPU
    OUTDIR/transformers_check.json  diagnostics: do transformers' tokenizer classes agree with the
                                tokenizer.json pipeline (ids, and what add_special_tokens adds)?

`--dry-run` only reads the corpus and checks the files (no `tokenizers` needed).
`--only-synthetic` writes refs_synthetic.jsonl only.
Exit status: 0 when all four refs_*.jsonl were written; 1 otherwise (what failed is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

# Single-threaded HF encode for the timing (must be set before tokenizers is imported).
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

TOKENIZERS = ["llama3", "qwen3", "llama2", "gpt2"]


def read_corpus(data: str) -> list[tuple[str, str]]:
    folder = os.path.join(data, "corpus")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".txt"))
    if not names:
        raise SystemExit(f"error: no corpus documents in {folder} (run scripts/fetch-test-data.sh)")
    docs = []
    for f in names:
        with open(os.path.join(folder, f), "rb") as fh:
            docs.append((f[: -len(".txt")], fh.read().decode("utf-8")))  # strict: corpus is UTF-8
    return docs


def tokenizer_files(data: str, name: str) -> list[str]:
    d = os.path.join(data, "tokenizers", name)
    files = ["vocab.json", "merges.txt"] if name == "gpt2" else ["tokenizer.json"]
    paths = [os.path.join(d, f) for f in files]
    for p in paths:
        if not os.path.isfile(p):
            raise SystemExit(f"error: missing {p} (run scripts/fetch-test-data.sh)")
    return paths


def load_hf(data: str, name: str):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    paths = tokenizer_files(data, name)
    if name != "gpt2":
        return Tokenizer.from_file(paths[0])
    # GPT-2 from vocab.json + merges.txt, set up exactly as the hub's gpt2/tokenizer.json is.
    try:
        bpe = models.BPE.from_file(paths[0], paths[1], continuing_subword_prefix="",
                                   end_of_word_suffix="", fuse_unk=False)
    except TypeError:  # older signatures: the defaults are the same
        bpe = models.BPE.from_file(paths[0], paths[1])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    assert tok.token_to_id("<|endoftext|>") == 50256, tok.token_to_id("<|endoftext|>")
    return tok


def split_special(ids: list[int], ids_sp: list[int]):
    """encode(add_special_tokens=True) as prefix + ids + suffix when it has that form."""
    k = len(ids_sp) - len(ids)
    if k < 0:
        return None
    for i in range(k + 1):
        if ids_sp[i : i + len(ids)] == ids:
            return {"prefix": ids_sp[:i], "suffix": ids_sp[i + len(ids) :]}
    return None


def versions() -> dict:
    v = {"python": platform.python_version()}
    for mod in ("tokenizers", "transformers"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - record whatever went wrong
            v[mod] = f"unavailable: {e}"
    return v


def write_refs(tok, name: str, docs, out: str, vers: dict) -> None:
    tmp = os.path.join(out, f"refs_{name}.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        head = {"tokenizer": name, "versions": vers, "docs": len(docs),
                "corpus_bytes": sum(len(t.encode()) for _, t in docs)}
        f.write(json.dumps(head) + "\n")
        for doc, text in docs:
            ids = tok.encode(text, add_special_tokens=False).ids
            ids_sp = tok.encode(text, add_special_tokens=True).ids
            rec = {"doc": doc, "bytes": len(text.encode()), "ids": ids}
            sp = split_special(ids, ids_sp)
            if sp is not None:
                rec["special"] = sp
            else:
                rec["ids_special"] = ids_sp
            dec = tok.decode(ids, skip_special_tokens=False)
            if dec != text:
                rec["decode"] = dec
            dec_skip = tok.decode(ids, skip_special_tokens=True)
            if dec_skip != dec:
                rec["decode_skip"] = dec_skip
            dec_sp = tok.decode(ids_sp, skip_special_tokens=False)
            if dec_sp != dec:
                rec["decode_special"] = dec_sp
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, os.path.join(out, f"refs_{name}.jsonl"))


def time_encode(tok, docs, min_seconds: float = 3.0) -> dict:
    """Single-thread throughput: encode each document separately, whole corpus passes."""
    texts = [t for _, t in docs]
    nbytes = sum(len(t.encode()) for t in texts)
    for t in texts:  # warm-up pass (fills the BPE cache, like any long-running process)
        tok.encode(t, add_special_tokens=False)
    passes, start = 0, time.perf_counter()
    while True:
        for t in texts:
            tok.encode(t, add_special_tokens=False)
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and passes >= 3:
            break
    total = nbytes * passes
    return {"bytes": total, "seconds": elapsed, "passes": passes,
            "mb_per_s": total / elapsed / 1e6}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def transformers_check(data: str, name: str, tok, docs) -> dict:
    """How transformers' own classes tokenize the same files (diagnostic only)."""
    import transformers

    d = os.path.join(data, "tokenizers", name)
    if name == "gpt2":
        t = transformers.GPT2TokenizerFast(vocab_file=os.path.join(d, "vocab.json"),
                                           merges_file=os.path.join(d, "merges.txt"))
    else:
        t = transformers.AutoTokenizer.from_pretrained(d)
    res = {"class": type(t).__name__, "same_ids": 0, "same_ids_special": 0, "docs": len(docs),
           "first_mismatch": None, "examples": {}}
    for doc, text in docs:
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_sp = tok.encode(text, add_special_tokens=True).ids
        tid = t(text, add_special_tokens=False)["input_ids"]
        tid_sp = t(text, add_special_tokens=True)["input_ids"]
        res["same_ids"] += tid == ids
        res["same_ids_special"] += tid_sp == ids_sp
        if (tid != ids or tid_sp != ids_sp) and res["first_mismatch"] is None:
            res["first_mismatch"] = {"doc": doc, "tokenizers": ids_sp[:40],
                                     "transformers": tid_sp[:40]}
        if doc.startswith("extra_0") and len(res["examples"]) < 5:
            res["examples"][doc] = {"special": tid_sp[:20],
                                    "decode": t.decode(tid_sp, skip_special_tokens=False)[:200]}
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        res[attr] = getattr(t, attr, None)
    return res


def synthetic_spec(data: str) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "fixtures", "tokenizer", "synthetic.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def synthetic_json(data: str, spec: dict, variant: dict) -> str:
    """The tokenizer.json text of one synthetic variant (see synthetic.json's "about")."""
    import copy

    if variant["base"] == "gpt2":
        d = copy.deepcopy(spec["gpt2_skeleton"])
        vocab_path, merges_path = tokenizer_files(data, "gpt2")
        with open(vocab_path, encoding="utf-8") as f:
            d["model"]["vocab"] = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            d["model"]["merges"] = [l.rstrip("\r\n") for l in f
                                    if l.rstrip("\r\n") and not l.startswith("#version")]
    else:
        with open(tokenizer_files(data, variant["base"])[0], encoding="utf-8") as f:
            d = json.load(f)
    for k, v in variant.get("set", {}).items():
        d[k] = v
    d["model"].update(variant.get("model", {}))
    d["added_tokens"] = d.get("added_tokens", []) + variant.get("added_tokens", [])
    return json.dumps(d, ensure_ascii=False)


def write_synthetic(data: str, docs, out: str, vers: dict) -> list:
    from tokenizers import Tokenizer

    spec = synthetic_spec(data)
    sub = [(d, t) for d, t in docs if any(d.startswith(p) for p in spec["doc_prefixes"])]
    status, lines = {}, []
    for v in spec["variants"]:
        try:
            tok = Tokenizer.from_str(synthetic_json(data, spec, v))
            for doc, text in sub:
                rec = {"variant": v["name"], "doc": doc, "bytes": len(text.encode())}
                try:  # HF can fail (even panic) on one document: record it, go on
                    ids = tok.encode(text, add_special_tokens=False).ids
                    ids_sp = tok.encode(text, add_special_tokens=True).ids
                except BaseException as e:  # noqa: BLE001 - pyo3 panics are BaseException
                    rec["error"] = repr(e)[:500]
                    lines.append(json.dumps(rec, ensure_ascii=False))
                    continue
                rec["ids"] = ids
                sp = split_special(ids, ids_sp)
                if sp is not None:
                    rec["special"] = sp
                else:
                    rec["ids_special"] = ids_sp
                try:
                    dec = tok.decode(ids, skip_special_tokens=False)
                    if dec != text:
                        rec["decode"] = dec
                    dec_skip = tok.decode(ids, skip_special_tokens=True)
                    if dec_skip != dec:
                        rec["decode_skip"] = dec_skip
                    dec_sp = tok.decode(ids_sp, skip_special_tokens=False)
                    if dec_sp != dec:
                        rec["decode_special"] = dec_sp
                except BaseException as e:  # noqa: BLE001
                    for k in ("decode", "decode_skip", "decode_special"):
                        rec.pop(k, None)
                    rec["decode_error"] = repr(e)[:500]
                lines.append(json.dumps(rec, ensure_ascii=False))
            status[v["name"]] = "ok"
        except Exception:  # noqa: BLE001 - a variant HF rejects is recorded, the rest go on
            status[v["name"]] = "error: " + traceback.format_exc()[-2000:]
            lines = [l for l in lines if json.loads(l)["variant"] != v["name"]]
        print(f"synthetic {v['name']}: {status[v['name']][:200]}", file=sys.stderr)
    tmp = os.path.join(out, "refs_synthetic.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps({"versions": vers, "variants": status, "docs": len(sub)}) + "\n")
        for l in lines:
            f.write(l + "\n")
    os.replace(tmp, os.path.join(out, "refs_synthetic.jsonl"))
    return [n for n, st in status.items() if st != "ok"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="tests/data", help="folder built by fetch-test-data.sh")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--tokenizers", default=",".join(TOKENIZERS))
    ap.add_argument("--min-seconds", type=float, default=3.0, help="timing per tokenizer")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="check inputs only")
    ap.add_argument("--only-synthetic", action="store_true", help="write refs_synthetic.jsonl only")
    args = ap.parse_args()

    names = [n for n in args.tokenizers.split(",") if n]
    docs = read_corpus(args.data)
    for n in names:
        tokenizer_files(args.data, n)
    nbytes = sum(len(t.encode()) for _, t in docs)
    print(f"corpus: {len(docs)} documents, {nbytes} bytes", file=sys.stderr)
    if args.dry_run:
        groups: dict[str, int] = {}
        for d, _ in docs:
            groups[d.split("_")[0]] = groups.get(d.split("_")[0], 0) + 1
        print(f"dry run: groups {groups}; tokenizers {names}: files present", file=sys.stderr)
        spec = synthetic_spec(args.data)
        for v in spec["variants"]:
            json.loads(synthetic_json(args.data, spec, v))
        print(f"dry run: {len(spec['variants'])} synthetic variants build", file=sys.stderr)
        return 0

    os.makedirs(args.out, exist_ok=True)
    vers = versions()
    try:
        bad_synthetic = write_synthetic(args.data, docs, args.out, vers)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        bad_synthetic = ["(all)"]
    if args.only_synthetic:
        print(f"ok: wrote refs_synthetic.jsonl to {args.out}; variants HF rejected: "
              f"{bad_synthetic or 'none'}", file=sys.stderr)
        return 0 if bad_synthetic != ["(all)"] else 1
    timing = {"cpu": cpu_model(), "nproc": os.cpu_count(), "versions": vers,
              "method": "encode() per document, add_special_tokens=False, RAYON_NUM_THREADS=1, "
                        "after one warm-up pass", "tokenizers": {}}
    checks: dict = {"versions": vers}
    failed = []
    for n in names:
        try:
            t0 = time.time()
            tok = load_hf(args.data, n)
            write_refs(tok, n, docs, args.out, vers)
            print(f"{n}: refs written ({time.time() - t0:.1f}s)", file=sys.stderr)
        except Exception:  # noqa: BLE001 - keep going with the other tokenizers
            traceback.print_exc()
            failed.append(n)
            continue
        if not args.no_timing:
            try:
                timing["tokenizers"][n] = time_encode(tok, docs, args.min_seconds)
                print(f"{n}: {timing['tokenizers'][n]['mb_per_s']:.2f} MB/s", file=sys.stderr)
            except Exception:  # noqa: BLE001
                timing["tokenizers"][n] = {"error": traceback.format_exc()}
        try:
            checks[n] = transformers_check(args.data, n, tok, docs)
        except Exception:  # noqa: BLE001 - diagnostics only
            checks[n] = {"error": traceback.format_exc()}
        print(f"{n}: transformers check {json.dumps(checks[n])[:300]}", file=sys.stderr)

    with open(os.path.join(args.out, "hf_timing.json"), "w") as f:
        json.dump(timing, f, indent=1)
    with open(os.path.join(args.out, "transformers_check.json"), "w") as f:
        json.dump(checks, f, indent=1, ensure_ascii=False)
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        return 1
    print(f"ok: wrote {', '.join('refs_%s.jsonl' % n for n in names)}, hf_timing.json, "
          f"transformers_check.json to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
