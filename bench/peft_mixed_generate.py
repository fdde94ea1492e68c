#!/usr/bin/env python3
"""The transformers + PEFT side of lowrank's serving benchmark (issue 13), and its test data.

Writes a random-init bf16 model of the Qwen2.5-0.5B (or Llama-3-8B) shape as a Hugging Face folder
(with a real tokenizer copied in, so that `lowrank serve` can detokenize) and N random LoRA
adapters (r=16, alpha=32, all-linear, B not zero) as PEFT folders; then, unless --no-peft, times
PEFT's mixed-adapter generate (one `generate` call per batch with `adapter_names`, greedy, 128-token
prompts) for each (batch, distinct adapters) pair and prints one JSON line per pair (prefix
"RESULT ").

    python3 bench/peft_mixed_generate.py --shape qwen0.5b --out DIR --tokenizer DIR \
        [--adapters 64] [--pairs 1x1,16x1,16x8,64x1,64x8,64x64] [--new 64] [--no-peft]
"""
import argparse
import json
import os
import shutil
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SHAPES = {
    "qwen0.5b": (Qwen2Config, Qwen2ForCausalLM, dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                                                   num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                                                   tie_word_embeddings=True, max_position_embeddings=4096)),
    "llama8b": (LlamaConfig, LlamaForCausalLM, dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                                  num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                                                  tie_word_embeddings=False, max_position_embeddings=8192)),
}


def prompts(n, length):
    # The same ids bench_serve_load sends: 3 + (i * 7919 + j * 31) % 997.
    return [[3 + (i * 7919 + j * 31) % 997 for j in range(length)] for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen0.5b", choices=sorted(SHAPES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True, help="folder with tokenizer.json (and tokenizer_config.json)")
    ap.add_argument("--adapters", type=int, default=64)
    ap.add_argument("--pairs", default="1x1,16x1,16x8,64x1,64x8,64x64")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--no-peft", action="store_true")
    a = ap.parse_args()

    cfg_cls, model_cls, kw = SHAPES[a.shape]
    cfg = cfg_cls(**kw, eos_token_id=None, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = model_cls(cfg).to(torch.bfloat16)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model_dir = os.path.join(a.out, "model")
    model.save_pretrained(model_dir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(a.tokenizer, f)):
            shutil.copy(os.path.join(a.tokenizer, f), model_dir)

    lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(model, lcfg, adapter_name="a0")
    for i in range(1, a.adapters):
        torch.manual_seed(100 + i)
        model.add_adapter(f"a{i}", lcfg)
    names = [f"a{i}" for i in range(a.adapters)]
    model.save_pretrained(os.path.join(a.out, "adapters"), selected_adapters=names)  # adapters/a0 .. adapters/aN-1
    print("wrote", model_dir, "and", a.adapters, "adapters", flush=True)
    if a.no_peft:
        return
    model.eval()
    for pair in a.pairs.split(","):
        batch, distinct = (int(x) for x in pair.split("x"))
        ids = torch.tensor(prompts(batch, a.prompt), device="cuda")
        adapter_names = [names[i % distinct] for i in range(batch)]
        kwargs = dict(max_new_tokens=a.new, min_new_tokens=a.new, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=adapter_names,
                           **dict(kwargs, max_new_tokens=4, min_new_tokens=4))  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=adapter_names,
                                 **kwargs)
            torch.cuda.synchronize()
            secs = time.perf_counter() - t0
        tokens = (out.shape[1] - ids.shape[1]) * batch
        print("RESULT " + json.dumps({"bench": "serve_gpu", "engine": "transformers+peft", "shape": a.shape,
                                      "clients": batch, "adapters": distinct, "prompt_tokens": a.prompt,
                                      "max_tokens": a.new, "output_tokens": tokens, "seconds": secs,
                                      "output_tok_s": tokens / secs}), flush=True)


if __name__ == "__main__":
    main()
