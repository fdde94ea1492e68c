#!/usr/bin/env python3
"""Reference fixtures for lowrank's model tests, made with transformers (run on the GPU box).

Writes, for every supported architecture, a tiny random model folder (weights scaled well above
transformers' 0.02 default so that mistakes show in the logits) with the logits and losses that
transformers computes for a few token sequences, in float64 on the CPU (exact reference, no TF32).

    python3 tests/reference/make_fixtures.py --out tests/fixtures/models

Each <out>/<name>/ holds: config.json, model.safetensors, generation_config.json (from
save_pretrained), eval.jsonl ({"input_ids": [...]} per line), expected.json (per-sequence and
token-weighted losses, transformers version; "greedy": 12 greedy tokens after a 6-token prompt) and
expected_logits.safetensors ("logits.<i>" [T, V],
float32 of the float64 result; "inv_freq" and "attention_scaling" of the rotary embedding).
"""
import argparse
import json
import math
import os
import shutil
import traceback

import torch
import transformers
from safetensors.torch import save_file
from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config,
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)


def with_rope(cfg, rope):
    """Sets RoPE parameters in whichever style this transformers version uses."""
    if rope is None:
        return cfg
    if hasattr(cfg, "rope_parameters"):
        params = dict(cfg.rope_parameters or {})
        params.update(rope)
        cfg.rope_parameters = params
    else:
        theta = rope.pop("rope_theta", None)
        if theta is not None:
            cfg.rope_theta = theta
        if rope.get("rope_type", "default") != "default":
            cfg.rope_scaling = rope
    return cfg


COMMON_LLAMA = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=320, max_position_embeddings=128,
                    rms_norm_eps=1e-5, tie_word_embeddings=False)

MODELS = {
    # name: (config class, model class, config kwargs, rope params, sequence lengths, save dtype)
    "llama": (LlamaConfig, LlamaForCausalLM, dict(COMMON_LLAMA), {"rope_type": "default", "rope_theta": 10000.0},
              [33, 12, 1], torch.float32),
    "llama_tied_bias": (LlamaConfig, LlamaForCausalLM,
                        dict(COMMON_LLAMA, tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                             head_dim=24),
                        {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}, [30, 7], torch.float32),
    "llama3_rope": (LlamaConfig, LlamaForCausalLM, dict(COMMON_LLAMA),
                    {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 32}, [48, 20], torch.float32),
    "llama_bf16": (LlamaConfig, LlamaForCausalLM, dict(COMMON_LLAMA), {"rope_type": "default", "rope_theta": 10000.0},
                   [25, 10], torch.bfloat16),
    "mistral": (MistralConfig, MistralForCausalLM,
                dict(COMMON_LLAMA, num_key_value_heads=1, sliding_window=12), {"rope_type": "default", "rope_theta": 10000.0},
                [32, 9], torch.float32),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM,
              dict(COMMON_LLAMA, hidden_size=96, num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                   use_sliding_window=False),
              {"rope_type": "default", "rope_theta": 1000000.0}, [28, 11], torch.float32),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM,
              dict(COMMON_LLAMA, head_dim=32, tie_word_embeddings=True, use_sliding_window=False,
                   max_position_embeddings=64),
              {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16},
              [40, 8], torch.float32),
    "gpt2": (GPT2Config, GPT2LMHeadModel,
             dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=300, activation_function="gelu_new",
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
             None, [31, 6], torch.float32),
    # Gemma 2: (1 + w) RMSNorm with post-attention / post-feedforward norms, gated GELU-tanh, √d embedding
    # scale, query_pre_attn_scalar, attention and final logit soft-capping, sliding window on every
    # other layer (the window is shorter than the sequences so that it matters).
    "gemma2": (Gemma2Config, Gemma2ForCausalLM,
               dict(COMMON_LLAMA, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                    attn_logit_softcapping=20.0, final_logit_softcapping=15.0, tie_word_embeddings=True,
                    hidden_activation="gelu_pytorch_tanh", pad_token_id=0, eos_token_id=1, bos_token_id=2),
               None, [33, 12], torch.float32),
    # Gemma 3 (text): Gemma 2 without soft-capping, plus q/k norms and a different RoPE theta for the
    # sliding (local) and full (global) layers.
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM,
               dict(COMMON_LLAMA, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                    tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=2),
               None, [33, 12], torch.float32),
    # Phi-3: fused qkv_proj and gate_up_proj, partial rotary.
    "phi3": (Phi3Config, Phi3ForCausalLM,
             dict(COMMON_LLAMA, partial_rotary_factor=0.5, pad_token_id=0, eos_token_id=2, bos_token_id=1),
             {"rope_type": "default", "rope_theta": 10000.0}, [30, 9], torch.float32),
    # Phi-3 with LongRoPE (su): short factors up to original_max_position_embeddings, long beyond
    # (the first sequence is longer than 32, the second shorter).
    "phi3_longrope": (Phi3Config, Phi3ForCausalLM,
                      dict(COMMON_LLAMA, partial_rotary_factor=0.5, pad_token_id=0, eos_token_id=2,
                           bos_token_id=1, original_max_position_embeddings=32),
                      {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 32,
                       "short_factor": [1.0, 1.1, 1.5, 2.0], "long_factor": [1.2, 2.0, 4.0, 8.0]},
                      [40, 20], torch.float32),
}


def greedy(model, prompt, max_new):
    """Greedy continuation by full recomputation (no cache: the reference stays simple)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new):
            ids.append(int(torch.argmax(model(input_ids=torch.tensor([ids])).logits[0, -1]).item()))
    return ids[len(prompt):]


def randomize(model, gen):
    """Re-initialises every parameter with O(1) scales (norm weights near 1, biases small)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_" in name):
                # Gemma's norms scale by (1 + w): keep the effective scale near 1 there too.
                one = 0.0 if model.config.model_type.startswith("gemma") else 1.0
                p.copy_(one + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed" in name or "wte" in name or "wpe" in name:
                # Gemma multiplies embeddings by √d: without a smaller scale the tied lm_head only
                # echoes the input token back.
                gemma = model.config.model_type.startswith("gemma")
                p.copy_((0.5 / math.sqrt(model.config.hidden_size) if gemma else 0.5) *
                        torch.randn(p.shape, generator=gen))
            else:
                # GPT-2 Conv1D stores [in, out]; nn.Linear stores [out, in].
                fan_in = p.shape[0] if "transformer.h" in name else p.shape[1]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def load_f64(model_cls, path):
    try:
        return model_cls.from_pretrained(path, dtype=torch.float64, attn_implementation="eager").eval()
    except TypeError:
        return model_cls.from_pretrained(path, torch_dtype=torch.float64, attn_implementation="eager").eval()


def rotary_info(model):
    for mod in model.modules():
        if hasattr(mod, "inv_freq") and isinstance(mod.inv_freq, torch.Tensor):
            return mod.inv_freq.detach().float().clone(), float(getattr(mod, "attention_scaling", 1.0))
    return None, 1.0


def make(name, out_root, seed):
    cfg_cls, model_cls, kwargs, rope, lengths, save_dtype = MODELS[name]
    gen = torch.Generator().manual_seed(seed)
    cfg = with_rope(cfg_cls(**kwargs), dict(rope) if rope else None)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    randomize(model, gen)
    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)
    model.to(save_dtype).save_pretrained(out, safe_serialization=True)
    # The reference runs in float64 on exactly the saved (rounded) weights.
    ref = load_f64(model_cls, out)
    vocab = cfg.vocab_size
    seqs = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]
    tensors, per_seq = {}, []
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for i, ids in enumerate(seqs):
            x = torch.tensor([ids])
            logits = ref(input_ids=x).logits[0]
            tensors[f"logits.{i}"] = logits.float().contiguous()
            if len(ids) > 1:
                nll = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="sum").item()
                per_seq.append({"tokens": len(ids) - 1, "loss": nll / (len(ids) - 1)})
                total_nll += nll
                total_tokens += len(ids) - 1
            else:
                per_seq.append({"tokens": 0, "loss": None})
            if len(ids) > 1:  # transformers' own loss path must agree with ours
                # (transformers upcasts logits to float32 for its loss, hence the tolerance)
                hf_loss = ref(input_ids=x, labels=x).loss.item()
                assert abs(hf_loss - per_seq[-1]["loss"]) < 1e-5 * abs(hf_loss), (name, hf_loss, per_seq[-1])
    inv_freq, attention_scaling = rotary_info(ref)
    if inv_freq is not None:
        tensors["inv_freq"] = inv_freq
    tensors["attention_scaling"] = torch.tensor([attention_scaling], dtype=torch.float32)
    save_file(tensors, os.path.join(out, "expected_logits.safetensors"))
    with open(os.path.join(out, "eval.jsonl"), "w") as f:
        for ids in seqs:
            f.write(json.dumps({"input_ids": ids}) + "\n")
    expected = {"model": name, "transformers": transformers.__version__, "torch": torch.__version__,
                "sequences": per_seq, "loss": total_nll / total_tokens, "tokens": total_tokens,
                "perplexity": math.exp(total_nll / total_tokens),
                # 12 greedy tokens after the first sequence's first 6 (no end-of-sequence stop)
                "greedy": {"prompt": seqs[0][:6], "output_ids": greedy(ref, seqs[0][:6], 12)}}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(f"{name}: loss {expected['loss']:.6f} over {total_tokens} tokens, "
          f"{sum(p.numel() for p in model.parameters())} parameters")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    failed = []
    for i, name in enumerate(MODELS):
        if not args.only or name in args.only:
            try:
                make(name, args.out, seed=1000 + i)
            except Exception:  # keep going: one broken case must not cost the others
                traceback.print_exc()
                failed.append(name)
    if failed:
        raise SystemExit(f"failed: {failed}")


if __name__ == "__main__":
    main()
