#!/usr/bin/env python3
"""The peer for lowrank's training attention: torch's scaled_dot_product_attention on the shapes
of bench_cuda_ops --attention (causal, GQA, bf16, q/k/v laid out [B, T, heads, head_dim] as models
pass them), forward and forward + backward, per backend. Prints microseconds a call.

    python3 bench/torch_sdpa.py            # on the GPU box, next to bench_cuda_ops --attention
"""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [("llama1b", 8, 1024, 32, 8, 64), ("qwen0.5b", 8, 1024, 14, 2, 64), ("llama8b", 8, 1024, 32, 8, 128)]
BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]


def best_us(fn, reps=20, rounds=5):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(rounds):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(stop) / reps)
    return best * 1000


def main():
    for name, B, T, H, KV, hd in SHAPES:
        q0 = torch.randn(B, T, H, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k0 = torch.randn(B, T, KV, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v0 = torch.randn(B, T, KV, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        q, k, v = (t.transpose(1, 2) for t in (q0, k0, v0))
        flops = 4 * B * H * T * T * hd / 2  # causal: QK^T and PV over half the keys
        for backend in BACKENDS:
            try:
                with sdpa_kernel([backend]):
                    def forward():
                        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                enable_gqa=True)
                    out = forward()
                    grad = torch.randn_like(out)
                    fwd = best_us(forward)
                    both = best_us(lambda: torch.autograd.grad(forward(), (q0, k0, v0), grad), reps=10)
            except RuntimeError as e:
                print(f"{name} {backend.name}: unavailable ({str(e).splitlines()[0][:120]})")
                continue
            bwd = both - fwd
            print(f"{name} B={B} T={T} H={H} KV={KV} hd={hd} {backend.name}: forward {fwd:.1f} us "
                  f"({flops / fwd / 1e6:.0f} TFLOP/s), backward {bwd:.1f} us ({2.5 * flops / bwd / 1e6:.0f} TFLOP/s)")


if __name__ == "__main__":
    main()
