#!/usr/bin/env python3
"""A randomly initialised Llama model folder, to pretrain with `lowrank train --full`.

    init_model.py OUT_DIR --tokenizer-from models/base [--hidden 768] [--layers 16] [--heads 12]
                  [--kv-heads 12] [--ffn 2048] [--context 1024] [--seed 1] [--arch llama|gpt2]

Writes OUT_DIR/config.json (LlamaForCausalLM, tied embeddings, the vocabulary and special ids of
the tokenizer folder), generation_config.json, the tokenizer files copied from --tokenizer-from,
and model.safetensors (f32) initialised as transformers initialises Llama: every linear weight and
the embedding ~ N(0, 0.02), the RMSNorm weights 1. --arch gpt2 writes a GPT2LMHeadModel instead
(learned positions, LayerNorms and biases everywhere, Conv1D weights stored [in, out], GELU MLP of
--ffn; transformers' init: weights ~ N(0, 0.02), biases 0, LayerNorm weights 1): a base with biases,
for bias-only training (BitFit). Uses numpy when it is there (the GPU box; a
120M model takes seconds), else the standard library (slow: tiny models only, e.g. a dry run).
"""
import argparse
import json
import os
import random
import shutil
import struct


def normal_f32_bytes(n, std, rng, np_rng):
    if np_rng is not None:
        import numpy as np
        return np_rng.normal(0.0, std, n).astype(np.float32).tobytes()
    return struct.pack("<%df" % n, *(rng.gauss(0.0, std) for _ in range(n)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--tokenizer-from", required=True, help="a model folder with tokenizer.json")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--arch", choices=["llama", "gpt2"], default="llama")
    a = ap.parse_args()
    kv = a.kv_heads or a.heads
    if a.hidden % a.heads or a.heads % kv:
        raise SystemExit("error: --hidden must be a multiple of --heads, and --heads of --kv-heads")
    src = json.load(open(os.path.join(a.tokenizer_from, "config.json")))
    head_dim = a.hidden // a.heads
    vocab = src["vocab_size"]
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
           "hidden_size": a.hidden, "intermediate_size": a.ffn, "num_hidden_layers": a.layers,
           "num_attention_heads": a.heads, "num_key_value_heads": kv, "head_dim": head_dim,
           "hidden_act": "silu", "max_position_embeddings": a.context, "initializer_range": 0.02,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None, "attention_bias": False,
           "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1, "tie_word_embeddings": True,
           "use_cache": True, "bos_token_id": src.get("bos_token_id"), "eos_token_id": src.get("eos_token_id"),
           "pad_token_id": src.get("pad_token_id"), "torch_dtype": "float32"}
    shapes = [("model.embed_tokens.weight", [vocab, a.hidden])]
    for i in range(a.layers):
        p = "model.layers.%d." % i
        shapes += [(p + "input_layernorm.weight", [a.hidden]),
                   (p + "self_attn.q_proj.weight", [a.heads * head_dim, a.hidden]),
                   (p + "self_attn.k_proj.weight", [kv * head_dim, a.hidden]),
                   (p + "self_attn.v_proj.weight", [kv * head_dim, a.hidden]),
                   (p + "self_attn.o_proj.weight", [a.hidden, a.heads * head_dim]),
                   (p + "post_attention_layernorm.weight", [a.hidden]),
                   (p + "mlp.gate_proj.weight", [a.ffn, a.hidden]),
                   (p + "mlp.up_proj.weight", [a.ffn, a.hidden]),
                   (p + "mlp.down_proj.weight", [a.hidden, a.ffn])]
    shapes.append(("model.norm.weight", [a.hidden]))
    if a.arch == "gpt2":
        if kv != a.heads:
            raise SystemExit("error: --arch gpt2 has no grouped-query attention (--kv-heads = --heads)")
        cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab,
               "n_embd": a.hidden, "n_layer": a.layers, "n_head": a.heads, "n_inner": a.ffn,
               "n_positions": a.context, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
               "initializer_range": 0.02, "scale_attn_weights": True, "tie_word_embeddings": True,
               "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "use_cache": True,
               "bos_token_id": src.get("bos_token_id"), "eos_token_id": src.get("eos_token_id"),
               "pad_token_id": src.get("pad_token_id"), "torch_dtype": "float32"}
        d, f = a.hidden, a.ffn
        shapes = [("transformer.wte.weight", [vocab, d]), ("transformer.wpe.weight", [a.context, d])]
        for i in range(a.layers):
            p = "transformer.h.%d." % i
            shapes += [(p + "ln_1.weight", [d]), (p + "ln_1.bias", [d]),
                       (p + "attn.c_attn.weight", [d, 3 * d]), (p + "attn.c_attn.bias", [3 * d]),
                       (p + "attn.c_proj.weight", [d, d]), (p + "attn.c_proj.bias", [d]),
                       (p + "ln_2.weight", [d]), (p + "ln_2.bias", [d]),
                       (p + "mlp.c_fc.weight", [d, f]), (p + "mlp.c_fc.bias", [f]),
                       (p + "mlp.c_proj.weight", [f, d]), (p + "mlp.c_proj.bias", [d])]
        shapes += [("transformer.ln_f.weight", [d]), ("transformer.ln_f.bias", [d])]

    try:
        import numpy as np
        np_rng = np.random.default_rng(a.seed)
    except ImportError:
        np_rng = None
    rng = random.Random(a.seed)
    os.makedirs(a.out_dir, exist_ok=True)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes:
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * n]}
        offset += 4 * n
    h = json.dumps(header).encode("utf-8")
    h += b" " * (-len(h) % 8)  # the data starts 8-byte aligned
    total = 0
    with open(os.path.join(a.out_dir, "model.safetensors"), "wb") as fh:
        fh.write(struct.pack("<Q", len(h)))
        fh.write(h)
        for name, shape in shapes:
            n = 1
            for d in shape:
                n *= d
            total += n
            if name.endswith("norm.weight") or ".ln_" in name and name.endswith(".weight"):
                fh.write(struct.pack("<%df" % n, *([1.0] * n)))
            elif name.endswith(".bias"):
                fh.write(b"\0" * (4 * n))
            else:
                fh.write(normal_f32_bytes(n, 0.02, rng, np_rng))
    with open(os.path.join(a.out_dir, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
        fh.write("\n")
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg[k] is not None}
    with open(os.path.join(a.out_dir, "generation_config.json"), "w") as fh:
        json.dump(gen, fh, indent=2)
        fh.write("\n")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(a.tokenizer_from, f)):
            shutil.copy(os.path.join(a.tokenizer_from, f), os.path.join(a.out_dir, f))
    print("init_model: %s: %s, hidden %d, %d layers, %d heads (%d kv), ffn %d, vocab %d: %d parameters (%.1fM)%s"
          % (a.out_dir, "GPT-2" if a.arch == "gpt2" else "Llama", a.hidden, a.layers, a.heads, kv, a.ffn, vocab, total, total / 1e6,
             "" if np_rng is not None else " [standard library]"))


if __name__ == "__main__":
    main()
