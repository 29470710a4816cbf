"""Triton kernels (forward and backward) for two memory-bound pieces of CodeFusion.

Importing this module imports Triton; :mod:`codefusion.kernels` only does so when Triton is
installed and only dispatches here for CUDA tensors. The kernels also run on CPU tensors under
the Triton interpreter (``TRITON_INTERPRET=1`` set before Triton is imported), which is how the
tests check them against :mod:`codefusion.kernels.reference` on a machine without a GPU.

Modulated LayerNorm (adaLN)
    The denoiser normalises its residual stream three times per block and modulates each result
    with the timestep's ``shift``/``scale``. Unfused, that is a LayerNorm pass plus two
    element-wise passes over ``[B, N, D]`` (and as many saved intermediates for backward), with
    almost no arithmetic per byte: the op is bound by memory bandwidth. The forward kernel reads
    each row once and writes ``y`` once, saving only the per-row mean and 1/std (fp32); the
    backward kernel recomputes ``xhat`` from ``x`` and produces ``dx`` together with per-program
    partial sums of ``dshift``/``dscale`` (reduced over a handful of partials afterwards), so
    ``dy`` and ``x`` are read once. Statistics and accumulation are fp32 for bf16 inputs.

Linear + cross-entropy (the head H)
    The head maps ``[N, Dz]`` latents to ``[N, V]`` logits and the loss needs only one number
    per row. Materialising all logits in fp32 (plus their softmax for backward) costs
    ``2 * 4 * N * V`` bytes, which dominates activation memory for a 32k vocabulary. Here the
    rows are processed in chunks: a chunk's logits are computed by a matmul in the compute
    dtype into a reused buffer, and a Triton kernel streams over vocabulary blocks keeping an
    online (running max, running sum) logsumexp in fp32 and gathering the target logit, so only
    ``lse`` and the per-row loss (``N`` floats each) survive the forward. The backward recomputes
    each chunk's logits, turns them in place into ``w_i * (softmax - onehot)`` with a second
    kernel, and accumulates ``grad_h``, ``grad_weight`` and ``grad_bias`` with matmuls (the
    approach of Liger-Kernel's fused linear cross-entropy, with the gradient deferred to the
    backward so that evaluation pays nothing for it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .reference import modulated_output_dtype

__all__ = ["modulated_layer_norm", "linear_cross_entropy"]

# Largest row (in elements) the modulated LayerNorm keeps in registers in one program.
_MAX_NORM_BLOCK = 65536
# Largest vocabulary block streamed per iteration by the cross-entropy kernels.
_MAX_VOCAB_BLOCK = 8192
# Default budget for one chunk of logits (elements): 16M = 32 MiB in bf16, 64 MiB in fp32.
_CHUNK_ELEMENTS = 1 << 24


# ---------------------------------------------------------------------------------------------
# Modulated LayerNorm
# ---------------------------------------------------------------------------------------------
@triton.jit
def _mln_fwd_kernel(
    X,  # [B, N, D] input, strides (stride_xb, stride_xn, 1)
    SHIFT,  # [B, D], strides (stride_sb, 1)
    SCALE,  # [B, D], strides (stride_cb, 1)
    Y,  # [B*N, D] output, contiguous
    MEAN,  # [B*N] fp32
    RSTD,  # [B*N] fp32
    N,
    D,
    stride_xb,
    stride_xn,
    stride_sb,
    stride_cb,
    eps,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // N
    n = row % N
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(X + b * stride_xb + n * stride_xn + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / D
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    shift = tl.load(SHIFT + b * stride_sb + cols, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(SCALE + b * stride_cb + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * (1.0 + scale) + shift
    tl.store(Y + row * D + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _mln_bwd_kernel(
    DY,  # [B, N, D] upstream gradient, strides (stride_dyb, stride_dyn, 1)
    X,  # [B, N, D], strides (stride_xb, stride_xn, 1)
    SCALE,  # [B, D], strides (stride_cb, 1)
    MEAN,  # [B*N] fp32
    RSTD,  # [B*N] fp32
    DX,  # [B*N, D] output, contiguous
    DSHIFT_PART,  # [B, CHUNKS, D] fp32 partial sums
    DSCALE_PART,  # [B, CHUNKS, D] fp32 partial sums
    N,
    D,
    CHUNKS,
    stride_dyb,
    stride_dyn,
    stride_xb,
    stride_xn,
    stride_cb,
    ROWS: tl.constexpr,  # rows of one batch element handled by one program
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    one_plus_scale = 1.0 + tl.load(SCALE + b * stride_cb + cols, mask=mask, other=0.0).to(
        tl.float32
    )
    dshift = tl.zeros([BLOCK_D], dtype=tl.float32)
    dscale = tl.zeros([BLOCK_D], dtype=tl.float32)
    # A constexpr trip count with the tail masked, not range(start, runtime end): the loop
    # bound is then a plain int under the interpreter too, where triton 3.6 with numpy >= 2.4
    # cannot turn a runtime scalar into a Python int.
    for i in range(ROWS):
        n = c * ROWS + i
        # The columns of row n, none past the tail. (One comparison of the block with a scalar:
        # ``mask & (n < N)`` would mix a block and a scalar, which the interpreter turns into
        # integers that tl.load refuses as a mask.)
        lmask = cols < tl.where(n < N, D, 0)
        row = b * N + n
        x = tl.load(X + b * stride_xb + n * stride_xn + cols, mask=lmask, other=0.0).to(tl.float32)
        dy = tl.load(DY + b * stride_dyb + n * stride_dyn + cols, mask=lmask, other=0.0).to(
            tl.float32
        )
        # Past the tail: the last row's statistics (in bounds), unused since x and dy are zero.
        stat = b * N + tl.minimum(n, N - 1)
        mean = tl.load(MEAN + stat)
        rstd = tl.load(RSTD + stat)
        xhat = tl.where(lmask, (x - mean) * rstd, 0.0)
        g = dy * one_plus_scale  # d loss / d xhat
        c1 = tl.sum(xhat * g, axis=0) / D
        c2 = tl.sum(g, axis=0) / D
        dx = (g - xhat * c1 - c2) * rstd
        tl.store(DX + row * D + cols, dx.to(DX.dtype.element_ty), mask=lmask)
        dshift += dy  # zero past the tail (masked loads)
        dscale += dy * xhat
    part = (b * CHUNKS + c) * D + cols
    tl.store(DSHIFT_PART + part, dshift, mask=mask)
    tl.store(DSCALE_PART + part, dscale, mask=mask)


def _norm_block(d: int) -> tuple[int, int]:
    block = triton.next_power_of_2(d)
    if block > _MAX_NORM_BLOCK:
        raise ValueError(f"modulated_layer_norm: D={d} exceeds the fused kernel's limit")
    num_warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    return block, num_warps


def _default_rows_per_program(x: torch.Tensor) -> int:
    b, n, _ = x.shape
    if x.is_cuda:
        target = 4 * torch.cuda.get_device_properties(x.device).multi_processor_count
    else:  # interpreter: a few programs per batch element, enough to exercise the tail
        target = 8
    chunks_per_batch = max(1, triton.cdiv(target, max(b, 1)))
    # A power of two: the row count is a compile-time constant of the backward kernel, so this
    # bounds the number of variants compiled over batch sizes and canvases.
    return triton.next_power_of_2(max(1, triton.cdiv(n, chunks_per_batch)))


def _rows_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim is contiguous (the kernels take the other strides), else a
    contiguous copy. The denoiser's shift/scale are [B, D] slices of a [B, 9, D] modulation: no
    copy for them (there were two per norm, 60 per denoising step of the paper model)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _mln_forward(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, n, d = x.shape
    block, num_warps = _norm_block(d)
    y = torch.empty((b, n, d), dtype=modulated_output_dtype(x, shift, scale), device=x.device)
    mean = torch.empty((b * n,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((b * n,), dtype=torch.float32, device=x.device)
    if b * n > 0:
        _mln_fwd_kernel[(b * n,)](
            x,
            shift,
            scale,
            y,
            mean,
            rstd,
            n,
            d,
            x.stride(0),
            x.stride(1),
            shift.stride(0),
            scale.stride(0),
            eps,
            BLOCK_D=block,
            num_warps=num_warps,
        )
    return y, mean, rstd


def _mln_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    rows_per_program: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, n, d = x.shape
    block, num_warps = _norm_block(d)
    rows = rows_per_program or _default_rows_per_program(x)
    chunks = max(1, triton.cdiv(n, rows))
    dx = torch.empty((b, n, d), dtype=x.dtype, device=x.device)
    dshift_part = torch.empty((b, chunks, d), dtype=torch.float32, device=x.device)
    dscale_part = torch.empty((b, chunks, d), dtype=torch.float32, device=x.device)
    if b * n > 0:
        _mln_bwd_kernel[(b, chunks)](
            dy,
            x,
            scale,
            mean,
            rstd,
            dx,
            dshift_part,
            dscale_part,
            n,
            d,
            chunks,
            dy.stride(0),
            dy.stride(1),
            x.stride(0),
            x.stride(1),
            scale.stride(0),
            ROWS=rows,
            BLOCK_D=block,
            num_warps=num_warps,
        )
    else:
        dshift_part.zero_()
        dscale_part.zero_()
    return dx, dshift_part.sum(dim=1), dscale_part.sum(dim=1)


class _ModulatedLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift, scale, eps, rows_per_program):
        x, shift, scale = _rows_view(x), _rows_view(shift), _rows_view(scale)
        y, mean, rstd = _mln_forward(x, shift, scale, eps)
        ctx.save_for_backward(x, scale, mean, rstd)
        ctx.shift_dtype = shift.dtype
        ctx.rows_per_program = rows_per_program
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, scale, mean, rstd = ctx.saved_tensors
        dx, dshift, dscale = _mln_backward(
            _rows_view(dy), x, scale, mean, rstd, ctx.rows_per_program
        )
        return dx, dshift.to(ctx.shift_dtype), dscale.to(scale.dtype), None, None


def modulated_layer_norm(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-5,
    *,
    rows_per_program: int | None = None,
) -> torch.Tensor:
    """Fused ``LayerNorm(x) * (1 + scale[:, None]) + shift[:, None]`` (see the reference).

    ``x`` ``[B, N, D]``, ``shift``/``scale`` ``[B, D]``; differentiable in all three.
    ``rows_per_program`` sets how many rows of one batch element a backward program reduces
    (a tuning/test knob; the default spreads the work over a few programs per SM).
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [B, N, D], got shape {tuple(x.shape)}")
    b, _, d = x.shape
    if tuple(shift.shape) != (b, d) or tuple(scale.shape) != (b, d):
        raise ValueError(f"shift/scale must be [B, D] = {(b, d)}")
    return _ModulatedLayerNorm.apply(x, shift, scale, float(eps), rows_per_program)


# ---------------------------------------------------------------------------------------------
# Linear + cross-entropy
# ---------------------------------------------------------------------------------------------
@triton.jit
def _ce_lse_kernel(
    LOGITS,  # [n, V] one chunk of logits (row stride `stride`)
    stride,
    TARGETS,  # [n] int64
    LSE,  # [n] fp32 out
    LOSS,  # [n] fp32 out: lse - logit[target]
    V,
    BLOCK_V: tl.constexpr,
    V_BLOCKS: tl.constexpr,  # cdiv(V, BLOCK_V): a constant trip count (see _mln_bwd_kernel)
):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride
    target = tl.load(TARGETS + row)
    m = float("-inf")  # running max
    s = 0.0  # running sum of exp(z - m)
    target_logit = 0.0
    for i in range(V_BLOCKS):
        offs = i * BLOCK_V + tl.arange(0, BLOCK_V)
        mask = offs < V
        z = tl.load(base + offs, mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
        target_logit += tl.sum(tl.where(offs == target, z, 0.0), axis=0)
    lse = m + tl.log(s)
    tl.store(LSE + row, lse)
    tl.store(LOSS + row, lse - target_logit)


@triton.jit
def _ce_grad_kernel(
    LOGITS,  # [n, V] logits in, d loss / d logits out (in place)
    stride,
    TARGETS,  # [n] int64
    LSE,  # [n] fp32
    COEF,  # [n] fp32: position weight * upstream gradient
    V,
    BLOCK_V: tl.constexpr,
    V_BLOCKS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride
    target = tl.load(TARGETS + row)
    lse = tl.load(LSE + row)
    coef = tl.load(COEF + row)
    for i in range(V_BLOCKS):
        offs = i * BLOCK_V + tl.arange(0, BLOCK_V)
        mask = offs < V
        z = tl.load(base + offs, mask=mask, other=0.0).to(tl.float32)
        p = tl.exp(z - lse)
        g = (p - tl.where(offs == target, 1.0, 0.0)) * coef
        tl.store(base + offs, g.to(LOGITS.dtype.element_ty), mask=mask)


def _vocab_block(v: int, block_v: int | None) -> tuple[int, int]:
    block = block_v or min(triton.next_power_of_2(v), _MAX_VOCAB_BLOCK)
    if block & (block - 1):
        raise ValueError(f"block_v must be a power of two, got {block}")
    num_warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
    return block, num_warps


def _compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(h.dtype, weight.dtype)


def _chunks(n: int, chunk_rows: int):
    for start in range(0, n, chunk_rows):
        yield start, min(start + chunk_rows, n)


def _chunk_logits(h_c, weight, bias, out):
    if bias is None:
        return torch.matmul(h_c, weight.t(), out=out)
    return torch.addmm(bias, h_c, weight.t(), out=out)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, position_weights, chunk_rows, block_v, cd):
        n, _ = h.shape
        v = weight.shape[0]
        block, num_warps = _vocab_block(v, block_v)
        hc = h.to(cd).contiguous()
        wc = weight.to(cd).contiguous()
        bc = None if bias is None else bias.to(cd).contiguous()
        targets = targets.contiguous()
        lse = torch.empty((n,), dtype=torch.float32, device=h.device)
        loss = torch.empty((n,), dtype=torch.float32, device=h.device)
        buf = torch.empty((min(chunk_rows, n), v), dtype=cd, device=h.device)
        for s, e in _chunks(n, chunk_rows):
            logits = _chunk_logits(hc[s:e], wc, bc, buf[: e - s])
            _ce_lse_kernel[(e - s,)](
                logits,
                logits.stride(0),
                targets[s:e],
                lse[s:e],
                loss[s:e],
                v,
                BLOCK_V=block,
                V_BLOCKS=triton.cdiv(v, block),
                num_warps=num_warps,
            )
        total = (loss * position_weights.to(torch.float32)).sum()
        ctx.save_for_backward(h, weight, bias, targets, position_weights, lse, loss)
        ctx.chunk_rows, ctx.block_v, ctx.cd = chunk_rows, block_v, cd
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        with torch.autocast(device_type=saved[0].device.type, enabled=False):
            return _lce_backward(ctx, saved, grad_out.to(torch.float32))


def _lce_backward(ctx, saved, grad_out):
    """Gradients of ``_LinearCrossEntropy``: recompute each chunk's logits, turn them into
    ``w_i * grad_out * (softmax - onehot)`` in place, and contract with matmuls."""
    h, weight, bias, targets, position_weights, lse, loss = saved
    need_h, need_w, need_b, _, need_pw = ctx.needs_input_grad[:5]
    cd, chunk_rows = ctx.cd, ctx.chunk_rows
    n, dz = h.shape
    v = weight.shape[0]
    block, num_warps = _vocab_block(v, ctx.block_v)
    grad_h = grad_w = grad_b = grad_pw = None
    if need_pw:
        grad_pw = (loss * grad_out).to(position_weights.dtype)
    if need_h or need_w or need_b:
        coef = (position_weights.to(torch.float32) * grad_out).contiguous()
        hc = h.to(cd).contiguous()
        wc = weight.to(cd).contiguous()
        bc = None if bias is None else bias.to(cd).contiguous()
        buf = torch.empty((min(chunk_rows, n), v), dtype=cd, device=h.device)
        gh = torch.empty((n, dz), dtype=cd, device=h.device) if need_h else None
        gw = torch.zeros((v, dz), dtype=torch.float32, device=h.device) if need_w else None
        gb = torch.zeros((v,), dtype=torch.float32, device=h.device) if need_b else None
        for s, e in _chunks(n, chunk_rows):
            dlogits = _chunk_logits(hc[s:e], wc, bc, buf[: e - s])
            _ce_grad_kernel[(e - s,)](
                dlogits,
                dlogits.stride(0),
                targets[s:e],
                lse[s:e],
                coef[s:e],
                v,
                BLOCK_V=block,
                V_BLOCKS=triton.cdiv(v, block),
                num_warps=num_warps,
            )
            if gh is not None:
                torch.matmul(dlogits, wc, out=gh[s:e])
            if gw is not None:
                if cd == torch.float32:
                    gw.addmm_(dlogits.t(), hc[s:e])
                else:
                    gw += torch.matmul(dlogits.t(), hc[s:e]).to(torch.float32)
            if gb is not None:
                gb += dlogits.sum(dim=0, dtype=torch.float32)
        grad_h = None if gh is None else gh.to(h.dtype)
        grad_w = None if gw is None else gw.to(weight.dtype)
        grad_b = None if gb is None else gb.to(bias.dtype)
    return grad_h, grad_w, grad_b, None, grad_pw, None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    position_weights: torch.Tensor,
    *,
    chunk_size: int | None = None,
    block_v: int | None = None,
) -> torch.Tensor:
    """Chunked ``sum_i w_i * CE(h_i @ weight.T + bias, targets_i)`` (see the reference).

    Returns a 0-d fp32 tensor, differentiable in ``h``, ``weight``, ``bias`` and
    ``position_weights``. ``targets`` must lie in ``[0, V)`` (not checked: that would cost a
    device sync; an out-of-range target contributes ``lse`` instead of ``lse - logit``).
    The logits are computed in the autocast dtype when autocast is on, else in the promoted
    dtype of ``h`` and ``weight``. ``chunk_size`` is the number of rows whose logits exist at
    once (default: ``2**24 // V`` rows, i.e. 32 MiB of bf16 logits); ``block_v`` the
    vocabulary block (a power of two) the kernels stream over.
    """
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(f"h [N, Dz] and weight [V, Dz] expected, got {h.shape}, {weight.shape}")
    n = h.shape[0]
    v = weight.shape[0]
    if tuple(targets.shape) != (n,) or tuple(position_weights.shape) != (n,):
        raise ValueError("targets and position_weights must be [N]")
    if bias is not None and tuple(bias.shape) != (v,):
        raise ValueError(f"bias must be [V] = ({v},), got {tuple(bias.shape)}")
    if n == 0:
        return (h.sum() * 0.0).to(torch.float32)
    cd = _compute_dtype(h, weight)
    chunk_rows = max(1, min(n, chunk_size or _CHUNK_ELEMENTS // max(v, 1)))
    with torch.autocast(device_type=h.device.type, enabled=False):
        return _LinearCrossEntropy.apply(
            h, weight, bias, targets, position_weights, chunk_rows, block_v, cd
        )
