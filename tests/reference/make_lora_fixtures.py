#!/usr/bin/env python3
"""PEFT reference fixtures for lowrank's LoRA tests (run on the GPU box after make_fixtures.py).

    python3 tests/reference/make_lora_fixtures.py --models tests/fixtures/models --out tests/fixtures/lora

Every case uses a base model folder made by make_fixtures.py. Adapters are created by PEFT in
float32 and saved with save_pretrained (the files lowrank must load); every number is then
computed in float64 on the CPU. Per case, <out>/<case>/ holds:
  adapter/ (PEFT's adapter_config.json + adapter_model.safetensors), batch.json (input_ids and
  labels, -100 = ignored), expected.json (loss on the batch, token-weighted eval loss of the adapted
  model over the base model's eval.jsonl), grads.safetensors (gradient of every trainable
  parameter, keyed like the adapter file; "full" case: keyed like the model file).
Special cases: llama_train10, llama_dora_train10 and the LoRA+ ones (10 AdamW steps: initial/ adapter, per-step
loss, lr and gradient norm, final.safetensors), generate (greedy continuations: base, one adapter,
two adapters with scales 1.0 and 0.5) and llama_pissa / llama_olora (initial/ adapter as PEFT
initialised it, residual.safetensors: the base weights it trains on, keyed "<module>.weight", and
the originals, "<module>.weight.original"; trained/: initial + a fixed perturbation; converted/:
trained saved with path_initial_model_for_weight_conversion, for the original base; expected.json:
eval losses of trained-on-residual and converted-on-original).
`--only CASE...` makes some cases only.
"""
import argparse
import json
import math
import os
import shutil
import traceback

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

torch.set_grad_enabled(True)


def load_base(models, name, dtype=torch.float32):
    path = os.path.join(models, name)
    try:
        m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    except TypeError:
        m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, attn_implementation="eager")
    return m.eval()


def read_eval(models, name):
    with open(os.path.join(models, name, "eval.jsonl")) as f:
        return [json.loads(line)["input_ids"] for line in f if line.strip()]


def make_batch(gen, vocab, rows, length, masked_prefix):
    ids = torch.randint(0, vocab, (rows, length), generator=gen)
    labels = ids.clone()
    labels[:, :masked_prefix] = -100
    labels[rows - 1, length - 3:] = -100  # as if the last row were right-padded
    return ids, labels


def eval_loss(model, seqs):
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for ids in seqs:
            if len(ids) < 2:
                continue
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0]
            nll += torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="sum").item()
            tokens += len(ids) - 1
    return nll / tokens


def clean_name(n):
    # "base_model.model.x.lora_A.default.weight" -> "base_model.model.x.lora_A.weight" (file keys)
    return n.replace(".default.", ".").replace(".default", "")


def save_adapter(peft_model, out):
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def lora_case(args, case, base, cfg, seed, rows=2, length=20, perturb_saved=0.0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = load_base(args.models, base)
    pm = get_peft_model(model, cfg)
    if perturb_saved:  # modules_to_save copies start as the base's: make them differ, as training would
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if ".modules_to_save." in n:
                    p.add_(perturb_saved * torch.randn(p.shape, generator=gen))
    out = os.path.join(args.out, case)
    os.makedirs(out, exist_ok=True)
    save_adapter(pm, os.path.join(out, "adapter"))
    pm = pm.double()
    ids, labels = make_batch(gen, model.config.vocab_size, rows, length, masked_prefix=4)
    loss = pm(input_ids=ids, labels=labels).loss
    loss.backward()
    grads = {clean_name(n): p.grad.float().contiguous() for n, p in pm.named_parameters()
             if p.requires_grad and p.grad is not None}
    save_file(grads, os.path.join(out, "grads.safetensors"))
    write_json(os.path.join(out, "batch.json"), {"input_ids": ids.tolist(), "labels": labels.tolist()})
    pm.eval()
    expected = {"case": case, "base": base, "loss": loss.item(),
                "eval_loss": eval_loss(pm, read_eval(args.models, base)),
                "trainable": sum(p.numel() for p in pm.parameters() if p.requires_grad),
                "peft": peft.__version__, "transformers": transformers.__version__}
    write_json(os.path.join(out, "expected.json"), expected)
    print(f"{case}: loss {expected['loss']:.6f} eval {expected['eval_loss']:.6f} "
          f"trainable {expected['trainable']} grads {len(grads)}")


def full_case(args, seed):
    gen = torch.Generator().manual_seed(seed)
    model = load_base(args.models, "llama", torch.float64)
    out = os.path.join(args.out, "llama_full")
    os.makedirs(out, exist_ok=True)
    ids, labels = make_batch(gen, model.config.vocab_size, 2, 20, masked_prefix=4)
    model.train()
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.float().contiguous() for n, p in model.named_parameters()}
    save_file(grads, os.path.join(out, "grads.safetensors"))
    write_json(os.path.join(out, "batch.json"), {"input_ids": ids.tolist(), "labels": labels.tolist()})
    write_json(os.path.join(out, "expected.json"), {"case": "llama_full", "base": "llama", "loss": loss.item()})
    print(f"llama_full: loss {loss.item():.6f}")


def loraplus_adamw(pm, hp):
    """PEFT's create_loraplus_optimizer over torch.optim.AdamW (its signature changed across versions)."""
    import inspect
    from peft.optimizers import create_loraplus_optimizer
    kw = {"lr": hp["lr"], "betas": tuple(hp["betas"]), "eps": hp["eps"], "weight_decay": hp["weight_decay"]}
    if "optimizer_kwargs" in inspect.signature(create_loraplus_optimizer).parameters:
        return create_loraplus_optimizer(pm, torch.optim.AdamW, optimizer_kwargs=kw,
                                         loraplus_lr_ratio=hp["loraplus_lr_ratio"])
    wd = kw.pop("weight_decay")
    return create_loraplus_optimizer(model=pm, optimizer_cls=torch.optim.AdamW, loraplus_lr_ratio=hp["loraplus_lr_ratio"],
                                     loraplus_weight_decay=wd, **kw)


def train_case(args, seed, steps=10, case="llama_train10", use_dora=False, loraplus_ratio=None):
    """10 steps of AdamW + warmup/cosine + clipping, as lowrank train does them (with LoRA+: PEFT's
    create_loraplus_optimizer groups, B and 1-D tensors at lr x ratio)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = load_base(args.models, "llama")
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", use_dora=use_dora,
                     task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)  # PEFT default init: kaiming-uniform A, zero B
    out = os.path.join(args.out, case)
    os.makedirs(out, exist_ok=True)
    save_adapter(pm, os.path.join(out, "initial"))
    pm = pm.double()
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    hp = {"lr": 5e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "warmup": 2,
          "schedule": "cosine", "steps": steps, "max_grad_norm": 1.0}
    if loraplus_ratio:
        hp["loraplus_lr_ratio"] = loraplus_ratio
        opt = loraplus_adamw(pm, hp)
    else:
        opt = torch.optim.AdamW(params, lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"],
                                weight_decay=hp["weight_decay"])
    sched = transformers.get_cosine_schedule_with_warmup(opt, hp["warmup"], steps)
    batches, log = [], []
    for step in range(steps):
        ids, labels = make_batch(gen, model.config.vocab_size, 2, 16, masked_prefix=3)
        batches.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
        lr = sched.get_last_lr()[0]
        loss = pm(input_ids=ids, labels=labels).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, hp["max_grad_norm"]).item()
        opt.step()
        sched.step()
        opt.zero_grad()
        log.append({"step": step + 1, "loss": loss.item(), "lr": lr, "grad_norm": norm})
    final = {clean_name(n): p.detach().float().contiguous() for n, p in pm.named_parameters() if p.requires_grad}
    save_file(final, os.path.join(out, "final.safetensors"))
    write_json(os.path.join(out, "batches.json"), batches)
    write_json(os.path.join(out, "expected.json"), {"case": case, "base": "llama", "hparams": hp, "log": log})
    print(f"{case}: " + " ".join(f"{e['loss']:.4f}" for e in log))


def init_case(args, case, base, init, seed):
    """PiSSA / OLoRA: PEFT's initial adapter, the residual base weights it trains on, and the adapter
    converted after training (path_initial_model_for_weight_conversion) so that it applies to the
    original base model; "training" here is a fixed perturbation of A and B."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = load_base(args.models, base)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                     init_lora_weights=init, task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    out = os.path.join(args.out, case)
    os.makedirs(out, exist_ok=True)
    # As PEFT's docs: save the initial adapter with init_lora_weights=True so loading it does not re-run the SVD.
    pm.peft_config["default"].init_lora_weights = True
    save_adapter(pm, os.path.join(out, "initial"))
    residual = {}
    for name, mod in pm.named_modules():
        if isinstance(mod, BaseTunerLayer) and hasattr(mod, "base_layer"):
            key = name.replace("base_model.model.", "", 1) + ".weight"
            residual[key] = mod.base_layer.weight.detach().float().contiguous()
            residual[key + ".original"] = original[key].float().contiguous()
    save_file(residual, os.path.join(out, "residual.safetensors"))
    with torch.no_grad():  # stands in for training
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    save_adapter(pm, os.path.join(out, "trained"))
    tmp = os.path.join(out, "converted.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pm.save_pretrained(tmp, path_initial_model_for_weight_conversion=os.path.join(out, "initial"))
    shutil.rmtree(os.path.join(out, "converted"), ignore_errors=True)
    os.replace(tmp, os.path.join(out, "converted"))
    pm = pm.double().eval()
    expected = {"case": case, "base": base, "init": init,
                "eval_loss_trained": eval_loss(pm, read_eval(args.models, base)),
                "peft": peft.__version__, "transformers": transformers.__version__}
    # The converted adapter on the untouched base model gives the same model as the trained one on the residual.
    fresh = load_base(args.models, base, torch.float64)
    from peft import PeftModel
    conv = PeftModel.from_pretrained(fresh, os.path.join(out, "converted")).double().eval()
    expected["eval_loss_converted"] = eval_loss(conv, read_eval(args.models, base))
    write_json(os.path.join(out, "expected.json"), expected)
    print(f"{case}: eval trained {expected['eval_loss_trained']:.6f} converted {expected['eval_loss_converted']:.6f}")


def greedy(model, prompt, max_new, eos_ids):
    ids = list(prompt)
    new = []
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            nxt = int(torch.argmax(logits).item())
            ids.append(nxt)
            new.append(nxt)
            if nxt in eos_ids:
                break
    return new


def eos_of(models, name, vocab):
    eos = set()
    for fname in ("generation_config.json", "config.json"):
        p = os.path.join(models, name, fname)
        if os.path.exists(p):
            with open(p) as f:
                e = json.load(f).get("eos_token_id")
            if e is not None:
                eos.update(e if isinstance(e, list) else [e])
            if eos:
                break
    return {e for e in eos if 0 <= e < vocab}


def generate_case(args, seed):
    out = os.path.join(args.out, "generate")
    os.makedirs(out, exist_ok=True)
    results = []
    for base in ["llama", "llama_tied_bias", "llama3_rope", "mistral", "qwen2", "qwen3", "gpt2", "llama_bf16"]:
        model = load_base(args.models, base, torch.float64)
        prompt = read_eval(args.models, base)[0][:6]
        eos = eos_of(args.models, base, model.config.vocab_size)
        results.append({"model": base, "adapters": [], "prompt": prompt, "eos": sorted(eos),
                        "output_ids": greedy(model, prompt, 12, eos)})
    # llama with adapters: one, then two with scales 1.0 and 0.5
    torch.manual_seed(seed)
    model = load_base(args.models, "llama")
    cfg_a = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    cfg_b = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                       task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg_a, adapter_name="a")
    pm.add_adapter("b", cfg_b)
    for name in ("a", "b"):
        tmp = os.path.join(out, "tmp_" + name)
        shutil.rmtree(tmp, ignore_errors=True)
        pm.save_pretrained(tmp, selected_adapters=[name])
        src = tmp if name == "default" else os.path.join(tmp, name)
        if not os.path.exists(os.path.join(src, "adapter_config.json")):
            src = tmp
        dst = os.path.join(out, "adapter_" + name)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        shutil.rmtree(tmp, ignore_errors=True)
    pm = pm.double().eval()
    prompt = read_eval(args.models, "llama")[0][:6]
    eos = eos_of(args.models, "llama", model.config.vocab_size)
    layers = [m for m in pm.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.set_adapter(["a"])
    results.append({"model": "llama", "adapters": [["adapter_a", 1.0]], "prompt": prompt, "eos": sorted(eos),
                    "output_ids": greedy(pm, prompt, 12, eos),
                    "eval_loss": eval_loss(pm, read_eval(args.models, "llama"))})
    for m in layers:
        m.set_adapter(["a", "b"])
        if "b" in getattr(m, "scaling", {}):
            m.scaling["b"] *= 0.5
    results.append({"model": "llama", "adapters": [["adapter_a", 1.0], ["adapter_b", 0.5]], "prompt": prompt,
                    "eos": sorted(eos), "output_ids": greedy(pm, prompt, 12, eos),
                    "eval_loss": eval_loss(pm, read_eval(args.models, "llama"))})
    write_json(os.path.join(out, "expected.json"), results)
    for r in results:
        print("generate", r["model"], r["adapters"], r["output_ids"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cases = [
        ("llama_all_linear", lambda: lora_case(args, "llama_all_linear", "llama", LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False,
            task_type="CAUSAL_LM"), seed=1)),
        ("qwen2_qv_bias", lambda: lora_case(args, "qwen2_qv_bias", "qwen2", LoraConfig(
            r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], bias="all",
            init_lora_weights=False, task_type="CAUSAL_LM"), seed=2)),
        ("gpt2_conv1d", lambda: lora_case(args, "gpt2_conv1d", "gpt2", LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True,
            init_lora_weights=False, task_type="CAUSAL_LM"), seed=3)),
        ("llama_rslora_paths", lambda: lora_case(args, "llama_rslora_paths", "llama", LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, use_rslora=True,
            target_modules=["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
                            "model.layers.1.mlp.down_proj", "model.layers.0.mlp.gate_proj"],
            rank_pattern={"down_proj": 2}, alpha_pattern={"gate_proj": 4}, init_lora_weights=False,
            task_type="CAUSAL_LM"), seed=4)),
        ("qwen3_all_linear", lambda: lora_case(args, "qwen3_all_linear", "qwen3", LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False,
            task_type="CAUSAL_LM"), seed=5)),
        ("llama_full", lambda: full_case(args, seed=6)),
        ("llama_train10", lambda: train_case(args, seed=7)),
        ("generate", lambda: generate_case(args, seed=8)),
        # Model families (issue: Gemma 2, Gemma 3, Phi-3; Phi-3's fused qkv_proj / gate_up_proj are one module each)
        *[(f"{base}_all_linear", (lambda base=base, seed=seed: lora_case(
            args, f"{base}_all_linear", base, LoraConfig(
                r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False,
                task_type="CAUSAL_LM"), seed=seed)))
          for base, seed in (("gemma2", 9), ("gemma3", 10), ("phi3", 11))],
        # Variants: DoRA, embedding and lm_head LoRA, PiSSA / OLoRA
        ("llama_dora", lambda: lora_case(args, "llama_dora", "llama", LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", use_dora=True,
            init_lora_weights=False, task_type="CAUSAL_LM"), seed=12)),
        ("llama_dora_train10", lambda: train_case(args, seed=13, case="llama_dora_train10", use_dora=True)),
        # LoRA+ (peft.optimizers.create_loraplus_optimizer): B at 8 x lr; with DoRA its magnitudes too
        ("llama_loraplus_train10", lambda: train_case(args, seed=22, case="llama_loraplus_train10", loraplus_ratio=8)),
        ("llama_dora_loraplus_train10", lambda: train_case(args, seed=23, case="llama_dora_loraplus_train10",
                                                           use_dora=True, loraplus_ratio=8)),
        ("llama_embed_lm_head", lambda: lora_case(args, "llama_embed_lm_head", "llama", LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["embed_tokens", "lm_head", "q_proj", "v_proj"],
            init_lora_weights=False, task_type="CAUSAL_LM"), seed=14)),
        ("qwen2_tied_embed", lambda: lora_case(args, "qwen2_tied_embed", "qwen2", LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["embed_tokens", "q_proj"],
            init_lora_weights=False, task_type="CAUSAL_LM"), seed=15)),
        # Gemma scales embeddings by √d: where the embedding LoRA's delta enters relative to the scale
        *[(f"{base}_embed", (lambda base=base, seed=seed: lora_case(args, f"{base}_embed", base, LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["embed_tokens", "q_proj"],
            init_lora_weights=False, task_type="CAUSAL_LM"), seed=seed)))
          for base, seed in (("gemma2", 18), ("gemma3", 19))],
        # modules_to_save: whole trained copies of the output layer (tied Qwen2: untied by the copy)
        # and of both embedding layers (Llama)
        ("qwen2_save_lm_head", lambda: lora_case(args, "qwen2_save_lm_head", "qwen2", LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"],
            init_lora_weights=False, task_type="CAUSAL_LM"), seed=20, perturb_saved=0.05)),
        ("llama_save_embed_lm_head", lambda: lora_case(args, "llama_save_embed_lm_head", "llama", LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"],
            init_lora_weights=False, task_type="CAUSAL_LM"), seed=21, perturb_saved=0.05)),
        ("llama_pissa", lambda: init_case(args, "llama_pissa", "llama", "pissa", seed=16)),
        ("llama_olora", lambda: init_case(args, "llama_olora", "llama", "olora", seed=17)),
    ]
    if args.only:
        unknown = set(args.only) - {name for name, _ in cases}
        if unknown:
            raise SystemExit(f"unknown cases: {sorted(unknown)}")
        cases = [(name, run) for name, run in cases if name in args.only]
    failed = []
    for name, run in cases:
        try:
            run()
        except Exception:  # keep going: one broken case must not cost the others
            traceback.print_exc()
            failed.append(name)
    if failed:
        raise SystemExit(f"failed: {failed}")


if __name__ == "__main__":
    main()
