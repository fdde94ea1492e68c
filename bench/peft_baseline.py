#!/usr/bin/env python3
"""The PEFT + transformers side of lowrank's GPU training benchmark (issue 6).

LoRA-trains random-init models with the shapes of Qwen2.5-0.5B, Llama-3.2-1B and Llama-3-8B in
bf16 on one GPU and prints tokens/s, peak GPU memory and MFU for each configuration, eager and
with torch.compile. Prints one JSON object per configuration (prefix "RESULT ") so that the
driver can tabulate it next to lowrank's numbers from the same run.

    python3 bench/peft_baseline.py [--only qwen0.5b,llama1b,llama8b] [--steps 20] [--warmup 5] [--dropout 0]
"""
import argparse
import json
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SHAPES = {
    "qwen0.5b": (Qwen2Config, Qwen2ForCausalLM, dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                                                   num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                                                   tie_word_embeddings=True, max_position_embeddings=4096), 8, 1024),
    "llama1b": (LlamaConfig, LlamaForCausalLM, dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                                                  num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                                                  tie_word_embeddings=True, max_position_embeddings=4096), 8, 1024),
    "llama8b": (LlamaConfig, LlamaForCausalLM, dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                                  num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                                                  tie_word_embeddings=False, max_position_embeddings=8192), 4, 2048),
}
PEAK_BF16 = 989e12  # H100/H200 dense bf16, the MFU denominator bench_train_gpu uses too


def flops_per_token(cfg, n_params, seq):
    # 4·N (forward 2N + input-gradient 2N; frozen weights get no weight gradient) + attention
    # (QKᵀ and PV: forward 4·T·d per layer per token, backward 2x that) with causal halving.
    attn = 3 * 4 * cfg.num_hidden_layers * seq * cfg.hidden_size / 2
    return 4 * n_params + attn


def random_model(name):
    """The shape's random-init bf16 model on the GPU: (config, model, parameters, batch, seq)."""
    cfg_cls, model_cls, kw, batch, seq = SHAPES[name]
    cfg = cfg_cls(**kw)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = model_cls(cfg).to(torch.bfloat16)
    return cfg, model, sum(p.numel() for p in model.parameters()), batch, seq


def run(name, targets, compile_model, checkpointing, steps, warmup, dropout=0.0):
    cfg, model, n_params, batch, seq = random_model(name)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    fwd = torch.compile(model) if compile_model else model
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = fwd(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    tps = batch * seq / dt
    res = {"model": name, "targets": targets if isinstance(targets, str) else ",".join(targets),
           "compile": compile_model, "checkpointing": checkpointing, "dropout": dropout, "batch": batch, "seq": seq,
           "engine": "peft", "tokens_per_s": tps, "peak_gib": torch.cuda.max_memory_reserved() / 2**30,
           "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
           "mfu": tps * flops_per_token(cfg, n_params, seq) / PEAK_BF16, "params": n_params,
           "trainable": sum(p.numel() for p in params), "loss": loss.item()}
    print("RESULT " + json.dumps(res), flush=True)
    del model, fwd, opt
    torch.cuda.empty_cache()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="qwen0.5b,llama1b,llama8b")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--targets", default="all", help="all, all-linear or q_proj,v_proj")
    ap.add_argument("--checkpointing", default="all", help="all, 0 or 1")
    ap.add_argument("--dropout", type=float, default=0.0, help="lora_dropout (PEFT's default is 0.0)")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    # Every eager configuration first, then the compiled ones (they take longer to start).
    modes = [True] if args.compile_only else ([False] if args.no_compile else [False, True])
    for comp in modes:
        for name in args.only.split(","):
            for targets in ("all-linear", ["q_proj", "v_proj"]):
                tname = targets if isinstance(targets, str) else ",".join(targets)
                if args.targets not in ("all", tname):
                    continue
                ckpts = [False, True] if name == "llama8b" and not args.no_checkpointing else [False]
                for ck in ckpts:
                    if args.checkpointing not in ("all", "1" if ck else "0"):
                        continue
                    try:
                        run(name, targets, comp, ck, args.steps, args.warmup, args.dropout)
                    except Exception as e:  # one failure must not cost the table
                        print("RESULT " + json.dumps({"model": name, "targets": str(targets), "compile": comp,
                                                      "checkpointing": ck, "error": repr(e)[:300]}), flush=True)
                        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
