#!/usr/bin/env python3
"""Pretrains the bundled base model: a small Llama (Hugging Face LlamaForCausalLM layout) trained
from scratch with a plain PyTorch loop (bf16 autocast on CUDA, AdamW, warmup + cosine).

    pretrain.py --corpus DIR --tokenizer DIR --out DIR [--minutes 8] [options]

  --corpus DIR      train.jsonl / val.jsonl from prepare_corpus.sh ({"text": ...} per line)
  --tokenizer DIR   tokenizer.json + tokenizer_config.json from train_tokenizer.py
  --out DIR         gets metrics.jsonl (lowrank's metrics format: `lowrank plot` draws it),
                    summary.json and, unless --model-dir says otherwise, model/: the HF model
                    folder (config.json, model.safetensors, generation_config.json, tokenizer files)
  --tar FILE        also write the model folder as a tar (entries base/...), refreshed with
                    every save, so a run that is killed still leaves its best model so far

The model is written in the exact layout of transformers' LlamaForCausalLM (tied embeddings, so
no lm_head.weight), as bf16 safetensors. The model itself is defined here (about 60 lines), so
the script needs only torch and tokenizers; when transformers is importable, the saved folder is
loaded with it at the end and its loss compared with ours (a check, never fatal).

Documents are tokenized as <|begin_of_text|> text <|end_of_text|> (what `lowrank train` does with
{"text"} lines), concatenated, and cut into random windows of --seq-len tokens. The run stops after
--minutes of training or --max-epochs passes over the data, whichever comes first: the number of
steps is fixed after a short timing run so that the cosine schedule ends where training ends
(--steps N fixes it instead). The validation loss is measured every --eval-every steps and the
best model so far is what gets saved.
"""
import argparse
import copy
import json
import math
import os
import shutil
import struct
import sys
import tarfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# ---------------------------------------------------------------------------------------------
# The model: Llama (RMSNorm, RoPE "default", SwiGLU MLP, no biases), parameter names as in HF.
class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kv, self.hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        d = c["hidden_size"]
        self.q_proj = nn.Linear(d, self.h * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.kv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.kv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.h * self.hd, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kv, self.hd).transpose(1, 2)
        q = (q * cos + rotate_half(q) * sin).to(v.dtype)  # cos/sin are f32
        k = (k * cos + rotate_half(k) * sin).to(v.dtype)
        if self.kv != self.h:
            k = k.repeat_interleave(self.h // self.kv, dim=1)
            v = v.repeat_interleave(self.h // self.kv, dim=1)
        if hasattr(F, "scaled_dot_product_attention"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # old torch
            s = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            y = s.masked_fill(mask, float("-inf")).softmax(-1).to(v.dtype) @ v
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.h * self.hd))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, f = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = MLP(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = Inner(c)
        hd = c["head_dim"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.register_buffer("inv_freq", inv, persistent=False)
        std = c["initializer_range"]
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)

    def forward(self, ids):  # ids [B, T] → logits [B, T, V] (in the autocast dtype)
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = self.model.norm(x)
        return F.linear(x, self.model.embed_tokens.weight)  # tied lm_head

    def loss(self, ids, targets):
        logits = self(ids)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Saving: safetensors written directly (the format is a JSON header and raw little-endian data).
def write_safetensors(path, tensors, metadata=None):
    names = sorted(tensors)
    header, blobs, off = {}, [], 0
    dtype_name = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
    for n in names:
        t = tensors[n].detach().contiguous().cpu()
        if t.dtype == torch.bfloat16:
            data = t.view(torch.int16).numpy().tobytes()
        else:
            data = t.numpy().tobytes()
        header[n] = {"dtype": dtype_name[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(h)))
        fh.write(h)
        for b in blobs:
            fh.write(b)


def hf_config(c, dtype_name):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c["vocab_size"],
        "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"],
        "head_dim": c["head_dim"],
        "hidden_act": "silu",
        "max_position_embeddings": c["max_position_embeddings"],
        "initializer_range": c["initializer_range"],
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_theta": c["rope_theta"],
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": c["rope_theta"]},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": c["bos_token_id"],
        "eos_token_id": c["eos_token_id"],
        "pad_token_id": c["pad_token_id"],
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }


def save_model(model, out_dir, tokenizer_dir, dtype=torch.bfloat16):
    """Writes the HF folder atomically (into DIR.tmp, then renamed)."""
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    c = model.c
    sd = {k: v.to(dtype) for k, v in model.state_dict().items() if k != "inv_freq"}
    write_safetensors(os.path.join(tmp, "model.safetensors"), sd, {"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as fh:
        json.dump(hf_config(c, {torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype]), fh, indent=2)
        fh.write("\n")
    with open(os.path.join(tmp, "generation_config.json"), "w") as fh:
        json.dump({"bos_token_id": c["bos_token_id"], "eos_token_id": c["eos_token_id"],
                   "pad_token_id": c["pad_token_id"]}, fh, indent=2)
        fh.write("\n")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_dir, f), os.path.join(tmp, f))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp, out_dir)


def write_tar(model_dir, path, arcdir="base"):
    tmp = path + ".tmp"
    with tarfile.open(tmp, "w") as tf:
        for f in sorted(os.listdir(model_dir)):
            tf.add(os.path.join(model_dir, f), arcname=arcdir + "/" + f)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
def encode_corpus(tok, path, bos, eos):
    with open(path, encoding="utf-8") as fh:
        texts = [json.loads(l)["text"] for l in fh if l.strip()]
    ids = []
    for i in range(0, len(texts), 256):
        for enc in tok.encode_batch(texts[i:i + 256], add_special_tokens=False):
            ids.append(bos)
            ids.extend(enc.ids)
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.int32), len(texts)


@torch.no_grad()
def evaluate(model, val_blocks, batch, device, amp):
    model.eval()
    total, n = 0.0, 0
    for i in range(0, val_blocks.shape[0], batch):
        b = val_blocks[i:i + batch].to(device, non_blocking=True).long()
        with amp():
            loss = model.loss(b[:, :-1], b[:, 1:])
        total += loss.item() * b.shape[0]
        n += b.shape[0]
    model.train()
    return total / max(1, n)


@torch.no_grad()
def greedy(model, tok, prompt, device, amp, bos, eos, n=40):
    model.eval()
    ids = [bos] + tok.encode(prompt, add_special_tokens=False).ids
    out = []
    for _ in range(n):
        x = torch.tensor([ids[-model.c["max_position_embeddings"]:]], device=device)
        with amp():
            nxt = int(model(x)[0, -1].float().argmax())
        if nxt == eos:
            break
        ids.append(nxt)
        out.append(nxt)
    model.train()
    return tok.decode(out)


def transformers_check(out_dir, model, val_blocks, device, tok, prompt):
    """Loads the saved folder with transformers; compares its loss with ours (same bf16 weights)
    and its tokenizer's ids with ours. A report, never fatal."""
    try:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except Exception as e:  # noqa: BLE001
        log("transformers check skipped (not importable: %s)" % e)
        return None
    import traceback
    res = {"transformers": transformers.__version__}
    try:
        hf = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).to(device).eval()
        ours = copy.deepcopy(model).float().eval()
        with torch.no_grad():
            for p in ours.parameters():  # the same rounding as the saved file
                p.copy_(p.to(torch.bfloat16).float())
            b = val_blocks[:8].to(device).long()
            # transformers shifts the labels itself: the same positions as ours below.
            l_hf = hf(input_ids=b[:, :-1], labels=b[:, :-1].clone()).loss.item()
            l_ours = ours.loss(b[:, :-2], b[:, 1:-1]).item()
        res.update(loss_transformers=l_hf, loss_ours=l_ours, model_ok=abs(l_hf - l_ours) < 2e-3)
        log("transformers %s model check: %s; loss transformers %.5f, ours %.5f" %
            (transformers.__version__, "OK" if res["model_ok"] else "MISMATCH", l_hf, l_ours))
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        log("transformers model check FAILED with an exception: %r" % e)
        res.update(model_ok=False, model_error=repr(e))
        return res
    try:
        ht = AutoTokenizer.from_pretrained(out_dir)
        ids_hf = list(ht(prompt)["input_ids"])
        ids_tok = tok.encode(prompt, add_special_tokens=True).ids
        res["tokenizer_ok"] = ids_hf == ids_tok
        enc = ht(prompt, return_tensors="pt").to(device)
        gen = hf.generate(**enc, max_new_tokens=30, do_sample=False)
        res["generate"] = ht.decode(gen[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)
        log("transformers tokenizer check: %s (%s vs %s); generate(%r) -> %r" %
            ("OK" if res["tokenizer_ok"] else "MISMATCH", ids_hf, ids_tok, prompt, res["generate"]))
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        log("transformers tokenizer/generate check FAILED with an exception: %r" % e)
        res.update(tokenizer_ok=False, tokenizer_error=repr(e))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model-dir", default="", help="where the HF folder goes (default OUT/model)")
    ap.add_argument("--tar", default="", help="also write the model folder as this tar file")
    ap.add_argument("--save-every-s", type=float, default=60.0, help="save the best model at most this often")
    ap.add_argument("--minutes", type=float, default=8.0, help="training time budget (wall clock)")
    ap.add_argument("--max-epochs", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=0, help="fix the number of steps (0: from the budget)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--max-positions", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    t_start = time.time()
    torch.manual_seed(a.seed)
    device = torch.device("cuda" if (a.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if a.device == "auto" else a.device))
    use_amp = device.type == "cuda"
    if use_amp:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def amp():
        if use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return torch.autocast(device_type="cpu", enabled=False)

    os.makedirs(a.out, exist_ok=True)
    log("torch %s, device %s%s" % (torch.__version__, device,
                                   " (%s)" % torch.cuda.get_device_name(device) if device.type == "cuda" else ""))

    # Tokenize.
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(a.tokenizer, "tokenizer.json"))
    with open(os.path.join(a.tokenizer, "tokenizer_config.json")) as fh:
        tcfg = json.load(fh)
    bos, eos = tok.token_to_id(tcfg["bos_token"]), tok.token_to_id(tcfg["eos_token"])
    pad = tok.token_to_id(tcfg.get("pad_token") or tcfg["eos_token"])
    vocab = tok.get_vocab_size()
    train_ids, n_train_docs = encode_corpus(tok, os.path.join(a.corpus, "train.jsonl"), bos, eos)
    val_ids, n_val_docs = encode_corpus(tok, os.path.join(a.corpus, "val.jsonl"), bos, eos)
    L = a.seq_len
    n_val = (val_ids.numel() - 1) // (L + 1)
    val_blocks = val_ids[:n_val * (L + 1)].view(n_val, L + 1)
    log("data: train %d docs, %d tokens; val %d docs, %d tokens (%d blocks of %d); vocab %d; %.1f s" %
        (n_train_docs, train_ids.numel(), n_val_docs, val_ids.numel(), n_val, L + 1, vocab, time.time() - t_start))
    assert train_ids.numel() > 4 * (L + 1) and n_val >= 1, "corpus too small"

    c = {"vocab_size": vocab, "hidden_size": a.hidden, "intermediate_size": a.intermediate,
         "num_hidden_layers": a.layers, "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads,
         "head_dim": a.hidden // a.heads, "max_position_embeddings": a.max_positions, "initializer_range": 0.02,
         "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": bos, "eos_token_id": eos,
         "pad_token_id": pad}
    assert L <= a.max_positions
    model = Llama(c).to(device)
    n_params = count_params(model)
    log("model: %.2fM parameters (hidden %d, %d layers, %d heads, intermediate %d, vocab %d, tied embeddings)" %
        (n_params / 1e6, a.hidden, a.layers, a.heads, a.intermediate, vocab))

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8)

    gen = torch.Generator().manual_seed(a.seed)
    n_starts = train_ids.numel() - (L + 1)
    tokens_per_step = a.batch * L

    def get_batch():
        starts = torch.randint(0, n_starts + 1, (a.batch,), generator=gen)
        idx = starts[:, None] + torch.arange(L + 1)[None, :]
        b = train_ids[idx].long()
        if device.type == "cuda":
            b = b.pin_memory().to(device, non_blocking=True)
        return b[:, :-1], b[:, 1:]

    max_steps_epochs = max(1, int(a.max_epochs * train_ids.numel() / tokens_per_step))
    budget = a.minutes * 60.0
    total_steps = a.steps or None  # fixed after timing when not given

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        T = total_steps or max_steps_epochs
        p = min(1.0, (step - a.warmup) / max(1, T - a.warmup))
        return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))

    metrics = open(os.path.join(a.out, "metrics.jsonl"), "w")

    def record(obj):
        metrics.write(json.dumps(obj) + "\n")
        metrics.flush()

    v0 = evaluate(model, val_blocks, a.batch, device, amp)
    record({"step": 0, "eval_loss": v0, "when": "before"})
    log("step 0: val loss %.4f (ln V = %.4f)" % (v0, math.log(vocab)))

    model_dir = a.model_dir or os.path.join(a.out, "model")
    best = (float("inf"), -1)
    best_state = None
    saved_step, t_saved = -1, time.time()

    def save_best():
        nonlocal saved_step, t_saved
        if best_state is None or saved_step == best[1]:
            return
        cur = {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()}
        model.load_state_dict(best_state)
        save_model(model, model_dir, a.tokenizer)
        if a.tar:
            write_tar(model_dir, a.tar)
        model.load_state_dict(cur)
        saved_step, t_saved = best[1], time.time()
    t_train = time.time()
    t_log, tok_log = t_train, 0
    step = 0
    last_eval = 0
    last_loss = float("nan")
    timing_from, timing_steps = 10, 50  # steps 10..50 are timed (the first ones warm up CUDA)
    t_timing = None
    while True:
        if total_steps is not None and step >= total_steps:
            break
        if total_steps is None and step == timing_from:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_timing = time.time()
        if total_steps is None and step == timing_steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.time() - t_timing) / (timing_steps - timing_from)
            per_step *= 1.05  # evaluations and saves
            remaining = budget - (time.time() - t_train)
            total_steps = min(max_steps_epochs, timing_steps + int(remaining / per_step))
            total_steps = max(total_steps, a.warmup + 10)
            log("timing: %.1f ms/step, %.0f tokens/s -> %d steps (%.2f epochs; budget %.1f min, "
                "epoch cap %d steps)" % (per_step * 1e3, tokens_per_step / per_step, total_steps,
                                         total_steps * tokens_per_step / train_ids.numel(), a.minutes,
                                         max_steps_epochs))
        if time.time() - t_train > budget * 1.15:  # hard stop (the timing estimate was off)
            log("time budget exceeded at step %d; stopping" % step)
            break
        lr = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch()
        with amp():
            loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        step += 1
        tok_log += tokens_per_step
        if step % a.log_every == 0 or step == 1:
            last_loss = loss.item()
            if not math.isfinite(last_loss):
                log("non-finite loss at step %d; stopping (the best model so far is kept)" % step)
                break
            now = time.time()
            tps = tok_log / max(1e-9, now - t_log)
            t_log, tok_log = now, 0
            record({"step": step, "loss": last_loss, "lr": lr, "grad_norm": float(gn),
                    "tokens": step * tokens_per_step, "tokens_per_second": tps})
            if step % (a.log_every * 10) == 0 or step == 1:
                log("step %d/%s: loss %.4f, lr %.2e, grad norm %.2f, %.0f tokens/s, %.0f s" %
                    (step, total_steps or "?", last_loss, lr, float(gn), tps, now - t_train))
        done = total_steps is not None and step >= total_steps
        if step % a.eval_every == 0 or done:
            last_eval = step
            v = evaluate(model, val_blocks, a.batch, device, amp)
            record({"step": step, "eval_loss": v, "when": "after" if done else "during"})
            mark = ""
            if v < best[0]:
                best = (v, step)
                best_state = {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()}
                mark = " (best)"
            log("step %d: val loss %.4f%s, %.0f s" % (step, v, mark, time.time() - t_train))
            if time.time() - t_saved >= a.save_every_s:
                save_best()
    train_seconds = time.time() - t_train
    if last_eval != step:  # stopped early: one last evaluation
        v = evaluate(model, val_blocks, a.batch, device, amp)
        if math.isfinite(v):
            record({"step": step, "eval_loss": v, "when": "after"})
            if v < best[0]:
                best = (v, step)
                best_state = {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()}
        log("step %d: val loss %.4f" % (step, v))
    metrics.close()

    if best_state is None:
        log("error: no finite validation loss; nothing saved")
        return 1
    model.load_state_dict(best_state)
    save_model(model, model_dir, a.tokenizer)
    if a.tar:
        write_tar(model_dir, a.tar)
    final_val = evaluate(model, val_blocks, a.batch, device, amp)
    prompts = ["The man said that", "The function returns", "In the beginning"]
    samples = {p: greedy(model, tok, p, device, amp, bos, eos) for p in prompts}
    for p, s in samples.items():
        log("greedy: %r -> %r" % (p, s))
    check = transformers_check(model_dir, model, val_blocks, device, tok, prompts[0])
    summary = {
        "parameters": n_params, "config": hf_config(c, "bfloat16"), "steps": step, "total_steps": total_steps,
        "batch": a.batch, "seq_len": L, "minutes": a.minutes, "max_epochs": a.max_epochs, "tokens_seen": step * tokens_per_step,
        "epochs": step * tokens_per_step / train_ids.numel(), "train_tokens": train_ids.numel(),
        "val_tokens": val_ids.numel(), "last_train_loss": last_loss, "best_val_loss": best[0],
        "best_val_step": best[1], "saved_val_loss": final_val, "train_seconds": train_seconds,
        "total_seconds": time.time() - t_start, "lr": a.lr, "warmup": a.warmup,
        "weight_decay": a.weight_decay, "seed": a.seed, "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "samples": samples, "transformers_check": check,
    }
    with open(os.path.join(a.out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
        fh.write("\n")
    log("done: %d steps in %.1f s (%.2f epochs); final train loss %.4f; val loss %.4f (best, step %d); "
        "saved model val loss %.4f (bf16) -> %s; total %.1f s" %
        (step, train_seconds, summary["epochs"], last_loss, best[0], best[1], final_val, model_dir,
         summary["total_seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
