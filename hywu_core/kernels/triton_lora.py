"""Per-row LoRA as two Triton kernels, shrink and expand (paper §3.7 and §7.6: "Triton kernels").

Batch row i of x (R, T, d_in) uses LoRA k = rows[i] of a stack A (N, r, d_in), B (N, d_out, r):

    shrink   h[i] = x[i] A[k]^T                   (R, T, r), fp32
    expand   out[i] (+)= scale * h[i] B[k]^T      (R, T, d_out), x's dtype; `+=` fused when adding

The design follows the gathered/segmented GEMM idea of Punica (SGMV, BGMV) and vLLM's LoRA ops:
the LoRA index is read inside the kernel, so one launch serves a batch whose rows use different,
repeated or unsorted LoRAs, and the factors are never gathered into per-row copies. Here a segment
is a whole batch row of T tokens (diffusion backbones call Linear on (batch, tokens, d)).

Numerics: every product accumulates in fp32 (tl.dot with an fp32 accumulator). The shrink
multiplies in the input dtype (16-bit products are exact in fp32). The intermediate h stays fp32
and the expand multiplies it by B in TF32 for 16-bit inputs: B converts exactly, h keeps fp32's
range (rounding h to fp16, as vLLM does with the input dtype, would bound it to 65504) and 10
mantissa bits (bf16 has 7); at rank <= 128 the expand stays bandwidth-bound at the TF32 rate. fp32
inputs use the precision torch.get_float32_matmul_precision() allows ("highest" -> IEEE fp32); 16-bit
operands of the shrink use the backend's default (the precision setting only concerns fp32).
The fused add reads out once, adds in fp32 and rounds once. Block sizes are heuristics, not
autotuned.

Importable without triton (macOS): AVAILABLE is then False and the launchers raise.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

AVAILABLE = triton is not None
MAX_SPLIT_K = 16

if triton is not None:

    @triton.jit
    def _shrink_kernel(x_ptr, a_ptr, rows_ptr, h_ptr, tokens, d_in, rank,
                       stride_xr, stride_xt, stride_xk, stride_an, stride_ar, stride_ak, stride_hr, stride_ht,
                       BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                       SPLIT_K: tl.constexpr, PRECISION: tl.constexpr):
        """One program: BLOCK_M tokens of batch row `row` times A[rows[row]]^T, over the d_in blocks
        pid_k, pid_k + SPLIT_K, ... (partial sums added atomically when SPLIT_K > 1)."""
        pid_m = tl.program_id(0)
        row = tl.program_id(1).to(tl.int64)
        pid_k = tl.program_id(2)
        lora = tl.load(rows_ptr + row).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_r = tl.arange(0, BLOCK_R)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + row * stride_xr + offs_m[:, None] * stride_xt + offs_k[None, :] * stride_xk
        a_ptrs = a_ptr + lora * stride_an + offs_r[None, :] * stride_ar + offs_k[:, None] * stride_ak
        token_mask = offs_m[:, None] < tokens
        rank_mask = offs_r[None, :] < rank
        step = BLOCK_K * SPLIT_K
        acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k in range(0, tl.cdiv(d_in, step)):
            remaining = d_in - k * step
            x = tl.load(x_ptrs, mask=token_mask & (offs_k[None, :] < remaining), other=0.0)
            a = tl.load(a_ptrs, mask=rank_mask & (offs_k[:, None] < remaining), other=0.0)
            acc = tl.dot(x, a, acc, input_precision=PRECISION)
            x_ptrs += step * stride_xk
            a_ptrs += step * stride_ak
        h_ptrs = h_ptr + row * stride_hr + offs_m[:, None] * stride_ht + offs_r[None, :]
        if SPLIT_K == 1:
            tl.store(h_ptrs, acc, mask=token_mask & rank_mask)
        else:
            tl.atomic_add(h_ptrs, acc, mask=token_mask & rank_mask)

    @triton.jit
    def _expand_kernel(h_ptr, b_ptr, rows_ptr, out_ptr, tokens, d_out, rank, scale,
                       stride_hr, stride_ht, stride_bn, stride_bo, stride_br, stride_or, stride_ot, stride_oo,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                       ADD: tl.constexpr, PRECISION: tl.constexpr):
        """One program: a BLOCK_M x BLOCK_N tile of scale * h[row] B[rows[row]]^T, stored or added to out."""
        pid = tl.program_id(0)
        row = tl.program_id(1).to(tl.int64)
        num_n = tl.cdiv(d_out, BLOCK_N)
        pid_m = pid // num_n
        pid_n = pid % num_n
        lora = tl.load(rows_ptr + row).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_r = tl.arange(0, BLOCK_R)
        h = tl.load(h_ptr + row * stride_hr + offs_m[:, None] * stride_ht + offs_r[None, :],
                    mask=(offs_m[:, None] < tokens) & (offs_r[None, :] < rank), other=0.0)
        b = tl.load(b_ptr + lora * stride_bn + offs_r[:, None] * stride_br + offs_n[None, :] * stride_bo,
                    mask=(offs_r[:, None] < rank) & (offs_n[None, :] < d_out), other=0.0)
        acc = tl.dot(h, b.to(tl.float32), input_precision=PRECISION) * scale
        out_ptrs = out_ptr + row * stride_or + offs_m[:, None] * stride_ot + offs_n[None, :] * stride_oo
        out_mask = (offs_m[:, None] < tokens) & (offs_n[None, :] < d_out)
        if ADD:
            acc += tl.load(out_ptrs, mask=out_mask, other=0.0).to(tl.float32)
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2_at_least(n: int, floor: int) -> int:
    return max(floor, 1 << max(0, n - 1).bit_length())


def block_rank(rank: int) -> int:
    """The rank tile: the next power of two, at least 16 (tl.dot needs every tile side >= 16)."""
    return _pow2_at_least(rank, 16)


def shrink_config(rows: int, tokens: int, d_in: int, rank: int, num_sms: int) -> dict:
    """BLOCK_M, BLOCK_K and SPLIT_K of the shrink launch.

    With fewer (row, token block) tiles than SMs, e.g. one token per row (adaLN-style modulation
    Linears), d_in is split over SPLIT_K programs per tile that add into h atomically, so the GEMV
    still spreads over about twice as many programs as there are SMs (split-K, as in Punica)."""
    block_m = min(64, _pow2_at_least(tokens, 16))
    block_k = 64 if block_rank(rank) >= 64 else 128
    tiles = rows * cdiv(tokens, block_m)
    split_k = 1 if tiles >= num_sms else max(1, min(cdiv(d_in, block_k), MAX_SPLIT_K, cdiv(2 * num_sms, tiles)))
    return {"BLOCK_M": block_m, "BLOCK_K": block_k, "SPLIT_K": split_k}


def expand_config(tokens: int, rank: int) -> dict:
    """BLOCK_M and BLOCK_N of the expand launch: wider output tiles while the rank tile is small."""
    return {"BLOCK_M": min(64, _pow2_at_least(tokens, 16)), "BLOCK_N": 128 if block_rank(rank) <= 64 else 64}


def _fp32_precision(fast: bool) -> str | None:
    """tl.dot input precision for fp32 operands: IEEE unless fast; fast is TF32 on NVIDIA and the
    backend's default elsewhere (ROCm allows TF32 on CDNA3 only)."""
    if not fast:
        return "ieee"
    return None if torch.version.hip else "tf32"


def _torch_allows_tf32() -> bool:
    """torch's own fp32 matmul policy: torch.set_float32_matmul_precision("high") allows TF32."""
    return torch.get_float32_matmul_precision() != "highest"


def _num_sms(device: torch.device) -> int:
    """SMs of a CUDA device; under TRITON_INTERPRET (CPU tensors) the figure only shapes split-K."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _require_triton() -> None:
    if triton is None:
        raise RuntimeError("the per-row LoRA kernels need triton, which is not installed here; call "
                           "hywu_core.kernels.per_row_lora, which falls back to the torch reference")


def shrink(x: Tensor, A: Tensor, rows: Tensor, split_k: int | None = None) -> Tensor:
    """x (R, T, d_in), A (N, r, d_in) of x's dtype, rows (R,) int -> h (R, T, r) fp32, h[i] = x[i] A[rows[i]]^T.

    split_k overrides the heuristic of shrink_config."""
    _require_triton()
    R, T, d_in = x.shape
    rank = A.shape[1]
    config = shrink_config(R, T, d_in, rank, _num_sms(x.device))
    if split_k is not None:
        config["SPLIT_K"] = split_k
    h = (torch.zeros if config["SPLIT_K"] > 1 else torch.empty)((R, T, rank), dtype=torch.float32, device=x.device)
    precision = _fp32_precision(_torch_allows_tf32()) if x.dtype == torch.float32 else None
    grid = (cdiv(T, config["BLOCK_M"]), R, config["SPLIT_K"])
    _shrink_kernel[grid](x, A, rows, h, T, d_in, rank, *x.stride(), *A.stride(), h.stride(0), h.stride(1),
                         BLOCK_R=block_rank(rank), PRECISION=precision, **config)
    return h


def expand(h: Tensor, B: Tensor, rows: Tensor, out: Tensor, scale: float, add: bool) -> Tensor:
    """h (R, T, r) fp32, B (N, d_out, r), rows (R,) int: writes (add=False) or adds (add=True)
    scale * h[i] B[rows[i]]^T into out (R, T, d_out) in one pass; returns out."""
    _require_triton()
    R, T, rank = h.shape
    d_out = B.shape[1]
    config = expand_config(T, rank)
    precision = _fp32_precision(B.dtype != torch.float32 or _torch_allows_tf32())
    grid = (cdiv(T, config["BLOCK_M"]) * cdiv(d_out, config["BLOCK_N"]), R)
    _expand_kernel[grid](h, B, rows, out, T, d_out, rank, float(scale), h.stride(0), h.stride(1), *B.stride(),
                         *out.stride(), BLOCK_R=block_rank(rank), ADD=add, PRECISION=precision, **config)
    return out


def per_row_lora_triton(x: Tensor, A: Tensor, B: Tensor, rows: Tensor, scale: float,
                        out: Tensor | None = None) -> Tensor:
    """x (R, ..., d_in), A (N, r, d_in), B (N, d_out, r), rows (R,) int on x's device.

    Without out: returns the delta (R, ..., d_out) in x's dtype. With out (that shape, x's dtype,
    viewable as (R, T, d_out)): adds the delta into it in place and returns it. Factors of another
    dtype are used at x's dtype. Inputs are not validated here; hywu_core.kernels does that."""
    R, T, d_in = x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1]
    d_out = B.shape[1]
    result = torch.empty(*x.shape[:-1], d_out, dtype=x.dtype, device=x.device) if out is None else out
    if R * T == 0:
        return result
    A, B = A.to(x.dtype), B.to(x.dtype)
    h = shrink(x.reshape(R, T, d_in), A, rows)
    expand(h, B, rows, result.view(R, T, d_out), scale, add=out is not None)
    return result
