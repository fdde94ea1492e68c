#!/usr/bin/env python3
"""NF4 reference fixture for lowrank's QLoRA tests (tests/model/nf4_test.cpp, Nf4.MatchesBitsandbytesFixture).

    python3 tests/reference/make_nf4_fixtures.py --out tests/fixtures/nf4 [--device cuda]

Quantizes a few small random matrices the way bitsandbytes stores a QLoRA weight
(bnb.functional.quantize_4bit(W, quant_type="nf4", blocksize=64, compress_statistics=True)) and
writes <out>/nf4.safetensors:
  dynamic_map             F32 [256]  create_dynamic_map(signed=True) (state2.code)
  caseN.weight            the input (F32 or BF16, as bnb would get it from the model)
  caseN.codes             U8 [(n+1)/2] packed 4-bit codes, element 2i in the high nibble
  caseN.absmax            F32 [blocks] first-level absmax (compress_statistics=False)
  caseN.offset            F32 [1]     mean of the absmax
  caseN.absmax_codes      U8 [blocks] (absmax - offset) as 8-bit dynamic-map codes
  caseN.absmax_scale      F32 [ceil(blocks/256)] state2.absmax
  caseN.dequantized       dequantize_4bit's output, in the weight's dtype
Metadata "source" says what made it: bitsandbytes itself when importable, else this file's
pure-torch re-implementation of bitsandbytes' algorithm (written from reading bnb's functional.py
and its CUDA kernels kQuantizeBlockwise / dQuantizeNF4 / dQuantize / kDequantizeBlockwise; no bnb
code is copied). bitsandbytes is not installed on our GPU box, so the committed fixture is the
re-implementation: an independent second implementation (torch ops, vectorised) of the same
steps as src/model/nf4.cpp, which the C++ test then matches bit for bit.
Two things depend on where it runs, as they do for bitsandbytes itself: the dynamic map comes
from torch.linspace on the CPU (its vectorised loop rounds some points differently with AVX2 and
AVX-512), and the offset is a torch mean (its summation order is the device's).
"""
import argparse
import os

import torch
from safetensors.torch import save_file

BLOCK = 64         # NF4 block (bnb blocksize)
ABSMAX_BLOCK = 256  # block of the double quantization (bnb: fixed)

# QLoRA's NF4 values (bnb's nf4 code book, as float32).
NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=torch.float32)
# The 15 thresholds of bnb's decision tree (dQuantizeNF4), as the float literals it compares with;
# with strict ">" at every node the code is the number of thresholds below x.
NF4_THRESHOLDS = torch.tensor([
    -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
    -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
    0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
    0.5016634166240692, 0.6427869200706482, 0.8614784181118011], dtype=torch.float32)


def dynamic_map_signed():
    """bnb's signed dynamic map: 7 decades (10^-6 .. 1) of means of linspace points, both signs, 0, 1."""
    values = []
    for decade in range(7):
        points = torch.linspace(0.1, 1, 2 ** decade + 1, dtype=torch.float32)  # on the CPU, as bnb
        mids = (points[:-1] + points[1:]) / 2.0
        scale = 10 ** (decade - 6)
        values += (scale * mids).tolist() + (-scale * mids).tolist()
    values += [0, 1.0]
    assert len(values) == 256
    return torch.tensor(sorted(values), dtype=torch.float32)


def blockwise_absmax(flat, block):
    n = flat.numel()
    padded = torch.zeros((n + block - 1) // block * block, dtype=torch.float32, device=flat.device)
    padded[:n] = flat.float()
    return padded, padded.view(-1, block).abs().amax(dim=1)


def quantize_nf4(w):
    flat = w.reshape(-1)
    n = flat.numel()
    padded, absmax = blockwise_absmax(flat, BLOCK)
    inv = 1.0 / absmax  # bnb multiplies by the reciprocal (a zero block: inf, then NaN → code 0)
    x = padded.view(-1, BLOCK) * inv[:, None]
    codes = (x.unsqueeze(-1) > NF4_THRESHOLDS.to(x.device)).sum(-1).to(torch.uint8).reshape(-1)
    if n % 2:  # bnb pairs an odd last element with a loaded 0
        codes = codes[: n + 1]
    else:
        codes = codes[:n]
    packed = (codes[0::2] << 4) | codes[1::2]
    return packed.contiguous(), absmax


def dynamic_codes(x, code):
    """bnb's dQuantize: 7 halvings from index 127, then the nearer neighbour by the midpoint."""
    code = code.to(x.device)
    pivot = torch.full_like(x, 127, dtype=torch.long)
    upper_pivot = torch.full_like(pivot, 255)
    lower_pivot = torch.zeros_like(pivot)
    lower = torch.full_like(x, -1.0)
    upper = torch.full_like(x, 1.0)
    val = code[pivot]
    step = 64
    while step > 0:
        right = x > val
        lower_pivot = torch.where(right, pivot, lower_pivot)
        lower = torch.where(right, val, lower)
        upper_pivot = torch.where(right, upper_pivot, pivot)
        upper = torch.where(right, upper, val)
        pivot = torch.where(right, pivot + step, pivot - step)
        val = code[pivot]
        step //= 2
    upper = torch.where(upper_pivot == 255, code[255], upper)
    lower = torch.where(lower_pivot == 0, code[0], lower)
    above = x > val
    pick_up = above & (x > (upper + val) * 0.5)
    pick_low = ~above & (x < (lower + val) * 0.5)
    out = torch.where(pick_up, upper_pivot, torch.where(pick_low, lower_pivot, pivot))
    return out.to(torch.uint8)


def quantize_torch(w, code):
    packed, absmax = quantize_nf4(w)
    offset = absmax.mean()
    centred = absmax - offset
    blocks = absmax.numel()
    padded, scale = blockwise_absmax(centred, ABSMAX_BLOCK)
    normed = (padded.view(-1, ABSMAX_BLOCK) * (1.0 / scale)[:, None]).reshape(-1)[:blocks]
    absmax_codes = dynamic_codes(normed, code)
    # Dequantize: absmax = map[code] · scale (one rounding), + offset (another); W = nf4 · absmax.
    idx = torch.arange(blocks, device=w.device) // ABSMAX_BLOCK
    absmax_deq = code.to(w.device)[absmax_codes.long()] * scale[idx]
    absmax_deq = absmax_deq + offset
    n = w.numel()
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n].long()
    deq = NF4.to(w.device)[codes] * absmax_deq.repeat_interleave(BLOCK)[:n]
    return dict(codes=packed, absmax=absmax, offset=offset.reshape(1), absmax_codes=absmax_codes,
                absmax_scale=scale, dequantized=deq.to(w.dtype).reshape(w.shape))


def quantize_bnb(w, F):
    q, state = F.quantize_4bit(w, blocksize=BLOCK, compress_statistics=True, quant_type="nf4")
    _, plain = F.quantize_4bit(w, blocksize=BLOCK, compress_statistics=False, quant_type="nf4")
    return dict(codes=q.reshape(-1), absmax=plain.absmax, offset=state.offset.reshape(1).float(),
                absmax_codes=state.absmax, absmax_scale=state.state2.absmax,
                dequantized=F.dequantize_4bit(q, state))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/nf4")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    try:
        import bitsandbytes.functional as F
        source = f"bitsandbytes {__import__('bitsandbytes').__version__}"
        code = F.create_dynamic_map(signed=True)
    except ImportError:
        F = None
        source = f"pure-torch re-implementation of bitsandbytes (torch {torch.__version__}, {args.device})"
        code = dynamic_map_signed()
    gen = torch.Generator().manual_seed(11)
    # Shapes: whole blocks; rows that are not a multiple of 64 (blocks span rows); an odd count;
    # two second-level blocks, the last partial; a block of zeros; outliers.
    cases = [((64, 128), torch.float32, 0.02), ((200, 96), torch.bfloat16, 0.05), ((3, 67), torch.float32, 1.0),
             ((130, 130), torch.bfloat16, 0.02)]
    tensors = {"dynamic_map": code.cpu().contiguous()}
    for i, (shape, dtype, std) in enumerate(cases):
        w = (torch.randn(shape, generator=gen) * std).to(dtype)
        if i == 3:
            w.view(-1)[:64] = 0          # a block of zeros
            w.view(-1)[1000] = 3.0       # an outlier
        dev_w = w.to(args.device)
        r = quantize_bnb(dev_w, F) if F else quantize_torch(dev_w, code)
        tensors[f"case{i}.weight"] = w.contiguous()
        for k, v in r.items():
            tensors[f"case{i}.{k}"] = v.detach().cpu().contiguous()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "nf4.safetensors")
    save_file(tensors, path, metadata={"source": source})
    print(f"wrote {path} ({source})")


if __name__ == "__main__":
    main()
