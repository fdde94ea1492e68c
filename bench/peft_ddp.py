#!/usr/bin/env python3
"""PEFT + torch DistributedDataParallel: the multi-GPU side of lowrank's data-parallel benchmark.

Run under torchrun, one process per GPU; each rank trains LoRA r=16 on its own batch of the shape's
size (bench/peft_baseline.py's shapes), DDP all-reduces the LoRA gradients. Rank 0 prints one
"RESULT " JSON line: tokens/s over all GPUs, peak reserved memory of its GPU.

    NCCL_NVLS_ENABLE=0 torchrun --standalone --nproc_per_node 2 bench/peft_ddp.py --only llama1b
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model

from peft_baseline import PEAK_BF16, flops_per_token, random_model


def run(name, targets, steps, warmup):
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg, model, n_params, batch, seq = random_model(name)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets,
                                             task_type="CAUSAL_LM"))
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    g = torch.Generator(device="cuda").manual_seed(rank)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda", generator=g)
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
        loss = ddp(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    tps = world * batch * seq / dt
    if rank == 0:
        res = {"engine": "peft-ddp", "model": name, "targets": targets if isinstance(targets, str) else ",".join(targets),
               "gpus": world, "split": False, "batch_per_gpu": batch, "seq": seq, "tokens_per_s": tps,
               "peak_gib": torch.cuda.max_memory_reserved() / 2**30,
               "mfu": tps / world * flops_per_token(cfg, n_params, seq) / PEAK_BF16}
        print("RESULT " + json.dumps(res), flush=True)
    del ddp, model, opt
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="llama1b,llama8b")
    ap.add_argument("--targets", default="all-linear")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    dist.init_process_group("nccl")
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    targets = args.targets if args.targets == "all-linear" else args.targets.split(",")
    for name in args.only.split(","):
        run(name, targets, args.steps, args.warmup)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
