"""Fused kernels (codefusion.kernels): references, dispatch, and the Triton kernels.

The Triton kernels are checked on CPU under the Triton interpreter. ``TRITON_INTERPRET=1`` only
takes effect if it is set before Triton is imported, so each kernel is compared in a fresh
subprocess with that variable set; this process (and every other test) never sees it.

Tolerances (kernel vs reference, on random non-zero inputs, with sizes that are not multiples
of the block sizes):

* fp32: ``rtol=1e-4`` element-wise, plus ``atol = 1e-4 * max|reference|`` so that elements
  near zero are judged on the tensor's scale (gradients in particular);
* bf16: ``rtol=atol=2e-2`` (about 5 bf16 ulps: both sides round an fp32 result to bf16, but
  the backward rounds intermediate gradients at different points);
* reference vs naive float64 formula: ``1e-10`` (same maths, different op order).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import codefusion.kernels as kernels
from codefusion.kernels import reference as ref

REPO = Path(__file__).resolve().parents[1]
# The package decides: HAS_TRITON is False when importing Triton fails (e.g. not installed).
needs_triton = pytest.mark.skipif(not kernels.HAS_TRITON, reason="triton is not installed")

FP32_RTOL = 1e-4
BF16_TOL = 2e-2
F64_TOL = 1e-10


def _run_python(script: str, **extra_env: str) -> str:
    """Run ``script`` in a fresh interpreter from the repo root; fail with its output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra_env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


# Shared by the interpreter scripts: the comparison helper, with the tolerances above.
_PRELUDE = f"""
import os
assert os.environ.get("TRITON_INTERPRET") == "1"
import torch
from codefusion.kernels import reference as ref
from codefusion.kernels import triton_kernels as tk

FP32_RTOL, BF16_TOL = {FP32_RTOL!r}, {BF16_TOL!r}

def close(got, want, what):
    assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    got, want = got.double(), want.double()
    if "bf16" in what:  # bf16 inputs or bf16 compute (autocast)
        rtol, atol = BF16_TOL, BF16_TOL * max(want.abs().max().item(), 1.0)
    else:
        rtol, atol = FP32_RTOL, FP32_RTOL * want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: what + ": " + m)
"""


# ---------------------------------------------------------------------------------------------
# Triton kernels vs references (interpreter, subprocess)
# ---------------------------------------------------------------------------------------------
_NORM_SCRIPT = (
    _PRELUDE
    + """
torch.manual_seed(0)

def case(b, n, d, dtype, rows_per_program=None, eps=1e-5, strided=False):
    tag = f"mln B={b} N={n} D={d} {dtype} rows={rows_per_program} strided={strided}"
    if dtype == torch.bfloat16:
        tag += " bf16"
    if strided:  # as in the denoiser: shift/scale are slices of a [B, 9, D] modulation
        x = (torch.randn(b, n, 2 * d) * 2 + 0.5).to(dtype)[..., d:].requires_grad_()
        mods = (0.5 * torch.randn(b, 9, d)).to(dtype).unbind(1)
        shift, scale = mods[3].requires_grad_(), mods[4].requires_grad_()
        dy = torch.randn(b, 2 * n, d).to(dtype)[:, ::2]
        assert not (x.is_contiguous() or shift.is_contiguous() or dy.is_contiguous())
    else:
        x = (torch.randn(b, n, d) * 2 + 0.5).to(dtype).requires_grad_()
        shift = (0.5 * torch.randn(b, d)).to(dtype).requires_grad_()
        scale = (0.5 * torch.randn(b, d)).to(dtype).requires_grad_()
        dy = torch.randn(b, n, d).to(dtype)
    y = tk.modulated_layer_norm(x, shift, scale, eps, rows_per_program=rows_per_program)
    grads = torch.autograd.grad(y, (x, shift, scale), dy)
    # The reference on the same (dtype-rounded) inputs, computed and differentiated in fp32.
    xs = [t.detach().float().requires_grad_() for t in (x, shift, scale)]
    y_ref = ref.modulated_layer_norm(*xs, eps)
    grads_ref = torch.autograd.grad(y_ref, xs, dy.float())
    close(y, y_ref.to(dtype), tag + " y")
    for name, g, g_ref, t in zip(("dx", "dshift", "dscale"), grads, grads_ref, (x, shift, scale)):
        close(g, g_ref.to(t.dtype), tag + " " + name)

case(3, 37, 96, torch.float32)                      # D=96 in a 128 block, default split of N
case(3, 37, 96, torch.float32, rows_per_program=5)  # 8 programs per example, tail of 2 rows
case(2, 1, 33, torch.float32, eps=1e-6)             # N=1, odd D
case(3, 37, 96, torch.bfloat16, rows_per_program=16)
case(3, 37, 96, torch.float32, rows_per_program=5, strided=True)  # strides, no copies
case(2, 9, 64, torch.bfloat16, strided=True)
print("OK")
"""
)


_CE_SCRIPT = (
    _PRELUDE
    + """
torch.manual_seed(0)

def case(n, dz, v, dtype=torch.float32, chunk_size=None, block_v=None, bias=True,
         grads=(True, True, True, True), logit_scale=1.0, autocast=False):
    tag = f"ce N={n} Dz={dz} V={v} {dtype} chunk={chunk_size} block_v={block_v} bias={bias}"
    tag += f" scale={logit_scale} autocast={autocast}"
    if dtype == torch.bfloat16 or autocast:
        tag += " bf16"
    h = (logit_scale * torch.randn(n, dz)).to(dtype)
    w = (torch.randn(v, dz) / dz**0.5).to(dtype)
    b = (0.1 * torch.randn(v)).to(dtype) if bias else None
    targets = torch.randint(0, v, (n,))
    pw = torch.rand(n) + 0.1
    pw[::7] = 0.0  # masked positions
    inputs = [h, w, b, pw]
    for t, g in zip(inputs, grads):
        if t is not None and g:
            t.requires_grad_()
    wrt = [t for t in inputs if t is not None and t.requires_grad]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = tk.linear_cross_entropy(h, w, b, targets, pw, chunk_size=chunk_size,
                                       block_v=block_v)
        got = torch.autograd.grad(loss, wrt)
        loss_ref = ref.linear_cross_entropy(h, w, b, targets, pw)
        want = torch.autograd.grad(loss_ref, wrt)
    close(loss, loss_ref.float(), tag + " loss")
    for i, (g, g_ref) in enumerate(zip(got, want)):
        close(g, g_ref, tag + f" grad{i}")

case(45, 40, 1001)                                   # one chunk, one 1024-wide vocab block
case(45, 40, 1001, chunk_size=7, block_v=256)        # 7 chunks (tail 3), 4 blocks (tail 233)
case(45, 40, 1001, chunk_size=16, block_v=512, bias=False, grads=(True, False, False, False))
case(45, 40, 1001, chunk_size=16, block_v=256, logit_scale=60.0)  # logits of order 100
case(45, 40, 1001, dtype=torch.bfloat16, chunk_size=16, block_v=512)
case(45, 40, 1001, chunk_size=23, autocast=True)  # bf16 logits, fp32 params
print("OK")
"""
)


@needs_triton
def test_triton_modulated_layer_norm_matches_reference():
    assert "OK" in _run_python(_NORM_SCRIPT, TRITON_INTERPRET="1")


@needs_triton
def test_triton_linear_cross_entropy_matches_reference():
    assert "OK" in _run_python(_CE_SCRIPT, TRITON_INTERPRET="1")


# ---------------------------------------------------------------------------------------------
# Optional import and dispatch
# ---------------------------------------------------------------------------------------------
def test_import_without_triton_uses_references():
    out = _run_python(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch
        import codefusion.kernels as k
        assert not k.HAS_TRITON
        x, s, c = torch.randn(2, 3, 8), torch.randn(2, 8), torch.randn(2, 8)
        assert torch.equal(
            k.modulated_layer_norm(x, s, c), k.reference.modulated_layer_norm(x, s, c)
        )
        h, w, b = torch.randn(4, 5), torch.randn(9, 5), torch.randn(9)
        t, pw = torch.randint(0, 9, (4,)), torch.rand(4)
        assert torch.equal(
            k.linear_cross_entropy(h, w, b, t, pw),
            k.reference.linear_cross_entropy(h, w, b, t, pw),
        )
        print("OK")
        """
    )
    assert "OK" in out


def test_dispatch_on_cpu_returns_reference():
    torch.manual_seed(1)
    x = torch.randn(3, 37, 96, requires_grad=True)
    shift, scale = torch.randn(3, 96), torch.randn(3, 96)
    assert not kernels.use_triton(x, shift, scale)
    y = kernels.modulated_layer_norm(x, shift, scale)
    assert torch.equal(y, ref.modulated_layer_norm(x, shift, scale))
    y.sum().backward()  # differentiable through the dispatcher
    assert x.grad is not None and torch.isfinite(x.grad).all()

    h, w, b = torch.randn(45, 40), torch.randn(1001, 40), torch.randn(1001)
    t, pw = torch.randint(0, 1001, (45,)), torch.rand(45)
    assert not kernels.use_triton(h, w, b, pw)
    got = kernels.linear_cross_entropy(h, w, b, t, pw)
    assert got.dim() == 0 and got.dtype == torch.float32
    assert torch.equal(got, ref.linear_cross_entropy(h, w, b, t, pw))


def test_disable_env_var_forces_reference(monkeypatch):
    monkeypatch.setenv("CODEFUSION_DISABLE_TRITON", "1")
    assert not kernels.use_triton(torch.randn(2))


# ---------------------------------------------------------------------------------------------
# References vs the naive formulas (float64), gradients included
# ---------------------------------------------------------------------------------------------
def _naive_modulated_layer_norm(x, shift, scale, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    xhat = (x - mu) / torch.sqrt(var + eps)
    return xhat * (1 + scale[:, None, :]) + shift[:, None, :]


def _naive_linear_cross_entropy(h, weight, bias, targets, position_weights):
    logits = h @ weight.T + bias
    m = logits.max(-1, keepdim=True).values
    lse = (m + torch.log(torch.exp(logits - m).sum(-1, keepdim=True))).squeeze(-1)
    ce = lse - logits.gather(1, targets[:, None]).squeeze(1)
    return (position_weights * ce).sum()


def _grads_match(f, g, inputs, seed_grad=None):
    out_f, out_g = f(*inputs), g(*inputs)
    torch.testing.assert_close(out_f, out_g, rtol=F64_TOL, atol=F64_TOL)
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    go = seed_grad if seed_grad is not None else torch.ones_like(out_f)
    for a, b in zip(
        torch.autograd.grad(out_f, diff, go), torch.autograd.grad(out_g, diff, go), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=F64_TOL, atol=F64_TOL)


def test_reference_modulated_layer_norm_vs_naive_formula():
    torch.manual_seed(2)
    x = (torch.randn(3, 37, 96, dtype=torch.float64) * 3 + 1).requires_grad_()
    shift = torch.randn(3, 96, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(3, 96, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(3, 37, 96, dtype=torch.float64)
    _grads_match(
        lambda *a: ref.modulated_layer_norm(*a, eps=1e-5),
        lambda *a: _naive_modulated_layer_norm(*a, eps=1e-5),
        (x, shift, scale),
        seed_grad=dy,
    )
    small = [
        torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 7, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 7, dtype=torch.float64, requires_grad=True),
    ]
    assert torch.autograd.gradcheck(ref.modulated_layer_norm, small)


def test_reference_linear_cross_entropy_vs_naive_formula():
    torch.manual_seed(3)
    n, dz, v = 45, 40, 1001
    h = torch.randn(n, dz, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, dz, dtype=torch.float64, requires_grad=True)
    b = torch.randn(v, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, v, (n,))
    pw = torch.rand(n, dtype=torch.float64, requires_grad=True)
    _grads_match(ref.linear_cross_entropy, _naive_linear_cross_entropy, (h, w, b, t, pw))
    small = (
        torch.randn(6, 4, dtype=torch.float64, requires_grad=True),
        torch.randn(11, 4, dtype=torch.float64, requires_grad=True),
        torch.randn(11, dtype=torch.float64, requires_grad=True),
        torch.randint(0, 11, (6,)),
        torch.rand(6, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(ref.linear_cross_entropy, small)


def test_reference_bf16_accumulates_in_fp32():
    torch.manual_seed(4)
    x = (torch.randn(2, 9, 64) * 4 + 100).to(torch.bfloat16)  # large mean: fp32 stats matter
    shift, scale = torch.randn(2, 64).bfloat16(), torch.randn(2, 64).bfloat16()
    y = ref.modulated_layer_norm(x, shift, scale)
    assert y.dtype == torch.bfloat16
    want = _naive_modulated_layer_norm(x.double(), shift.double(), scale.double(), 1e-5)
    torch.testing.assert_close(y, want.bfloat16(), rtol=BF16_TOL, atol=BF16_TOL)


def test_reference_shape_errors():
    with pytest.raises(ValueError):
        ref.modulated_layer_norm(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError):
        ref.modulated_layer_norm(torch.randn(2, 3, 4), torch.randn(2, 5), torch.randn(2, 4))
    with pytest.raises(ValueError):
        ref.linear_cross_entropy(
            torch.randn(3, 4),
            torch.randn(5, 6),
            None,
            torch.zeros(3, dtype=torch.long),
            torch.ones(3),
        )


def test_kernel_loops_have_compile_time_trip_counts():
    """Triton 3.6's interpreter with numpy >= 2.4 cannot turn a runtime scalar into a Python int
    ("only 0-dimensional arrays can be converted to Python scalars"), so ``range`` over a
    runtime bound fails there (it passes on 3.9). Every loop in a kernel must run over a
    ``tl.constexpr`` parameter; the kernel tests above then pass on either version (checked with
    ``pip install --target DIR triton==3.6.0`` and ``PYTHONPATH=DIR``)."""
    import ast
    import inspect

    from codefusion.kernels import triton_kernels as tk

    tree = ast.parse(inspect.getsource(tk))
    kernels = [
        f
        for f in tree.body
        if isinstance(f, ast.FunctionDef)
        and any(ast.unparse(d) == "triton.jit" for d in f.decorator_list)
    ]
    assert len(kernels) == 4
    for f in kernels:
        constexpr = {
            a.arg for a in f.args.args if a.annotation and "constexpr" in ast.unparse(a.annotation)
        }
        for node in ast.walk(f):
            if isinstance(node, ast.For):
                call = node.iter
                assert isinstance(call, ast.Call) and ast.unparse(call.func) == "range", f.name
                bounds = [ast.unparse(a) for a in call.args]
                assert len(bounds) == 1 and bounds[0] in constexpr, (f.name, bounds)
