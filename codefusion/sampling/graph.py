"""The CUDA-graph runner: the plain sampler's step, captured once and replayed for every step.

Taken by :func:`codefusion.sampling.sample` with ``fast`` on CUDA and cached K/V. The loop has
fixed shapes, so one step (the request's denoise function, ``denoise.py``, then the DDIM update,
:func:`ddim.ddim_update`) is compiled (``torch.compile``) and captured once as a CUDA graph over
static buffers, and replayed
for every step; the timestep and the step's coefficients (a row of :class:`ddim.StepPlan`) are
device tensors copied into the graph's inputs before each replay, so one graph serves every step
of every call of the same shape. N runs as a bf16 copy of itself (:func:`low_precision_denoiser`,
refreshed from the model's weights at each call), not under autocast: autocast inside a graph
must re-cast every weight at every replay (its cast cache is off under capture), a third of the
step's kernels. The DDIM update stays fp32. ``eta > 0`` works: each step's noise is drawn from
the caller's generator into a static buffer before the replay, in the plain loop's order. Prompt
K/V are padded to a bucket of prompt lengths (powers of two), masked only when the bucket or the
batch has padding: without a mask SDPA can take the flash kernel. Classifier-free guidance
(``guidance`` ≠ 1) captures the step on 2P rows of K/V (conditional, then unconditional) and
keeps w in a buffer; an edit (``strength``) loads the input's x_t0 instead of x_T and replays
only the plan's steps below t0 (none at t0 = 0: D reads L(code) directly). Both set up through
:func:`request.prepare`, as the plain loop does.

A failed capture (or compilation) warns and runs the step eagerly, a correct but slow fallback;
under :func:`strict_graphs` or ``CODEFUSION_STRICT_GRAPHS=1`` (the benchmark, the smoke check)
it is an error instead. ``sample_graph(..., use_graph=False, dtype=None, compile_backend=None)``
runs the captured step function eagerly in fp32: on CPU it equals the plain loop (the tests).
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
import weakref
from collections.abc import Iterator

import torch

from codefusion.model import KV, CodeFusionModel, Denoiser, Prompt
from codefusion.sampling.ddim import StepCoef, ddim_update
from codefusion.sampling.denoise import Conditioning, DenoiseSpec, make_denoise
from codefusion.sampling.options import SamplingOptions
from codefusion.sampling.request import Known, SampleOutput, decode_tokens, prepare
from codefusion.schedule import SqrtSchedule
from codefusion.tokenizer import prompt_bucket


class GraphCaptureError(RuntimeError):
    """The fast sampler could not compile or capture its step (see :func:`strict_graphs`)."""


_STRICT = False


@contextlib.contextmanager
def strict_graphs(strict: bool = True) -> Iterator[None]:
    """Within this block a step that cannot be compiled or captured as a CUDA graph raises
    :class:`GraphCaptureError` instead of warning and running eagerly: a benchmark or a smoke
    check must not time or pass the slow fallback unnoticed. ``CODEFUSION_STRICT_GRAPHS=1``
    does the same for a whole process."""
    global _STRICT
    before, _STRICT = _STRICT, strict
    try:
        yield
    finally:
        _STRICT = before


def graphs_are_strict() -> bool:
    return _STRICT or os.environ.get("CODEFUSION_STRICT_GRAPHS", "") not in ("", "0")


def _fast_path_failed(what: str, e: Exception) -> None:
    msg = f"{what} failed ({type(e).__name__}: {e}); the fast sampler runs its steps eagerly"
    if graphs_are_strict():
        raise GraphCaptureError(msg) from e
    warnings.warn(msg, stacklevel=4)


# A low-precision copy of N per model, for the fast path. Rebuilt when the model's weights move
# (another address, device or dtype); otherwise refreshed in place from the model at every call,
# one foreach copy, so that it follows training, EMA swaps and loads however they write (a
# graph captured on the copy reads its weights by address).
_COPIES: weakref.WeakKeyDictionary[CodeFusionModel, tuple[tuple, Denoiser]] = (
    weakref.WeakKeyDictionary()
)


def low_precision_denoiser(model: CodeFusionModel, dtype: torch.dtype) -> Denoiser:
    """N in ``dtype`` with the model's current weights, in the model's train/eval mode."""
    src = list(model.denoiser.parameters())
    key = (dtype, tuple(p.data_ptr() for p in src))
    cached = _COPIES.get(model)
    if cached is not None and cached[0] == key:
        net = cached[1]
        torch._foreach_copy_(list(net.parameters()), src)
    else:
        net = copy.deepcopy(model.denoiser)
        for m in net.modules():
            # A compiled N's copy would still call N itself (nn.Module.compile in place stores a
            # compiled bound method of the original): run the copy's own forward.
            m._compiled_call_impl = None
        net = net.requires_grad_(False).to(dtype)
        _COPIES[model] = (key, net)
    return net.train(model.denoiser.training)


class DenoiseStep:
    """The fast path's state: static buffers, the N it runs, and :meth:`step`, which reads and
    writes only them.

    ``step`` is the function the CUDA graph captures (compiled first where ``compile_backend``
    says): the request's denoise function (``spec``) on ``x`` at ``t`` with ``coef`` (one row
    of the plan, :class:`StepCoef`'s fields), then the DDIM update with ``noise``; it writes x̂0
    to ``x0`` and x_t' over ``x``. Between replays only the buffers' contents change, never
    their addresses: :meth:`load` fills the per-call ones (x_T, the :class:`Conditioning`: N's
    cross-attention K/V padded to ``prompt_len``, w, the clamping table, the given tokens), the
    sampler the per-step ones (``t``, ``coef``, ``noise``). ``net`` is N or its low-precision
    copy, whose weights the graph reads by address (kept alive here); no reference to the model
    is kept. ``masked`` False: no cross-attention mask at all (no padded key in any call of this
    shape)."""

    def __init__(
        self,
        model: CodeFusionModel,
        net: Denoiser,
        spec: DenoiseSpec,
        rows: int,  # N latent rows
        kv: list[KV],  # this call's K/V ([P] or [2P] rows): shapes and dtype of the static copies
        prompt_len: int,
        x_dtype: torch.dtype,
        with_noise: bool,
        masked: bool = True,
        compile_backend: str | None = None,
        prompt: Prompt | None = None,  # this call's pointer input: shapes of the static copy
    ) -> None:
        cfg = model.config
        self.net, self.spec = net, spec
        self.denoise = make_denoise(spec, net)
        k0 = kv[0][0]
        kv_rows, dev = k0.shape[0], k0.device
        self.x = torch.zeros((rows, cfg.code_len, cfg.latent_dim), dtype=x_dtype, device=dev)
        self.x0 = torch.zeros_like(self.x)
        # The self-conditioning input: x0 itself, or both halves' own estimates (guided).
        self.x0_self = self.x0.repeat(2, 1, 1) if spec.guided else self.x0
        self.t = torch.zeros((rows,), dtype=torch.long, device=dev)
        self.coef = torch.ones((len(StepCoef._fields),), dtype=torch.float32, device=dev)
        self.noise = torch.zeros_like(self.x) if with_noise else None
        static_kv = [
            tuple(
                torch.zeros(
                    (kv_rows, a.shape[1], prompt_len, a.shape[3]), dtype=a.dtype, device=dev
                )
                for a in pair
            )
            for pair in kv
        ]
        self.cond = Conditioning(
            kv=static_kv,
            mask=torch.ones((kv_rows, 1, 1, prompt_len), dtype=torch.bool, device=dev)
            if masked
            else None,
            guidance=torch.ones((), dtype=torch.float32, device=dev) if spec.guided else None,
            table=torch.zeros((cfg.vocab_size, cfg.latent_dim), dtype=x_dtype, device=dev)
            if spec.clamp or spec.prediction == "tokens"
            else None,
            known_mask=torch.zeros((rows, cfg.code_len, 1), dtype=torch.bool, device=dev)
            if spec.known
            else None,
            known_x0=torch.zeros_like(self.x) if spec.known else None,
            prompt=Prompt(
                torch.zeros((kv_rows, prompt_len, prompt.enc.shape[-1]), dtype=prompt.enc.dtype,
                            device=dev),
                torch.zeros((kv_rows, prompt_len), dtype=torch.bool, device=dev),
                torch.zeros((kv_rows, prompt_len), dtype=torch.long, device=dev),
            )
            if prompt is not None
            else None,
        )  # fmt: skip
        self.graph: torch.cuda.CUDAGraph | None = None
        self.compiled = False
        self._run = self.step
        if compile_backend is not None:
            try:
                self._run = torch.compile(self.step, backend=compile_backend, fullgraph=True)
                self.compiled = True
            except Exception as e:  # e.g. no compiler for this platform
                _fast_path_failed("compiling the denoising step", e)

    def load(self, x: torch.Tensor, cond: Conditioning) -> None:
        """Copy one call's inputs into the static buffers (the prompt's K/V into the first
        ``s`` positions; the rest zeroed and masked out). x̂0 starts at zero: the first step's
        self-conditioning input."""
        static = self.cond
        s = cond.kv[0][0].shape[2]
        for buf_pair, pair in zip(static.kv, cond.kv, strict=True):
            for buf, a in zip(buf_pair, pair, strict=True):
                buf[:, :, :s].copy_(a)
                buf[:, :, s:].zero_()
        if static.mask is not None:
            static.mask.zero_()
            if cond.mask is None:
                static.mask[..., :s] = True
            else:
                static.mask[..., :s].copy_(cond.mask)
        elif cond.mask is not None or s != static.kv[0][0].shape[2]:
            raise ValueError("an unmasked step takes unpadded prompts of its bucket's length")
        self.x.copy_(x)
        self.x0.zero_()
        self.x0_self.zero_()
        for name in ("guidance", "table", "known_mask", "known_x0"):
            buf = getattr(static, name)
            if buf is not None:
                buf.copy_(getattr(cond, name))
        if static.prompt is not None:  # padded like the K/V: beyond s nothing to point at
            for buf, a in zip(static.prompt, cond.prompt, strict=True):
                buf.zero_()
                buf[:, :s].copy_(a)

    def step(self) -> None:
        """The captured function: the denoise function and the DDIM update, from and into the
        static buffers, N in its own dtype (no autocast) and the update in ``x``'s."""
        c = StepCoef.of(self.coef)
        x0, x0_self = self.denoise(self.x, self.t, c, self.cond, self.x0_self)
        x_prev = ddim_update(self.x, x0, c, self.noise)
        self.x0.copy_(x0)
        if self.x0_self is not self.x0:
            self.x0_self.copy_(x0_self)
        self.x.copy_(x_prev)  # after every read of x: kernels run in stream order

    def warm_up(self, runs: int = 2) -> None:
        """Run the step (compiling it, where it is compiled) before any capture or timing. A
        compilation that fails here falls back to the eager step (see strict_graphs)."""
        try:
            for _ in range(runs):
                self._run()
        except GraphCaptureError:
            raise
        except Exception as e:
            if not self.compiled:
                raise
            _fast_path_failed("compiling the denoising step", e)
            self._run, self.compiled = self.step, False
            for _ in range(runs):
                self._run()

    def capture(self, warmup: int = 2) -> None:
        """Record the step into a CUDA graph. Warm-up runs on a side stream first (lazy
        cuBLAS/SDPA initialisation, Triton and torch.compile compilation must not happen during
        capture); their results are overwritten by :meth:`load`."""
        dev = self.x.device
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            self.warm_up(warmup)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._run()
        self.graph = graph

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run()


# One DenoiseStep (and its graph) per model and call shape, reused across calls. Keyed on the
# denoiser's parameter addresses too: a graph reads weights by address, so moving or replacing
# them (model.to, a new Parameter) builds a new graph; in-place updates are seen by the old one
# (through the low-precision copy, refreshed at every call). Calls of one model share these
# buffers: do not sample from one model in two threads at once.
_STEPS: weakref.WeakKeyDictionary[CodeFusionModel, dict[tuple, DenoiseStep]] = (
    weakref.WeakKeyDictionary()
)
_MAX_STEPS_PER_MODEL = 8  # a few prompt-length buckets, masked or not


def _denoise_step_for(
    model: CodeFusionModel,
    net: Denoiser,
    spec: DenoiseSpec,
    rows: int,
    kv: list[KV],
    prompt_len: int,
    x_dtype: torch.dtype,
    with_noise: bool,
    use_graph: bool,
    masked: bool,
    compile_backend: str | None,
    prompt: Prompt | None = None,
) -> DenoiseStep:
    k0 = kv[0][0]
    shapes = (rows, *k0.shape[:2], prompt_len, k0.dtype, k0.device, x_dtype)
    options = (with_noise, use_graph, model.training, masked, compile_backend)
    weights = (tuple(p.data_ptr() for p in model.denoiser.parameters()), id(net))
    key = (spec, shapes, options, weights)
    cache = _STEPS.setdefault(model, {})
    runner = cache.pop(key, None)
    if runner is None:
        runner = DenoiseStep(
            model, net, spec, rows, kv, prompt_len, x_dtype, with_noise, masked, compile_backend,
            prompt,
        )  # fmt: skip
        if use_graph:
            try:
                runner.capture()
            except GraphCaptureError:
                raise
            except Exception as e:  # an op that cannot be captured: still correct, eagerly
                _fast_path_failed("CUDA graph capture", e)
                runner.graph = None
        else:
            runner.warm_up(runs=1 if runner.compiled else 0)
        while len(cache) >= _MAX_STEPS_PER_MODEL:
            cache.pop(next(iter(cache)))  # least recently used
    cache[key] = runner  # (re)inserted last: most recently used
    return runner


@torch.no_grad()
def sample_graph(
    model: CodeFusionModel,
    schedule: SqrtSchedule,
    enc: torch.Tensor,
    cross_mask: torch.Tensor | None,
    num_draws: int,
    generator: torch.Generator,
    options: SamplingOptions,
    known: Known | None = None,
    trace_at: set[int] | None = None,
    start: torch.Tensor | None = None,
    prompt: Prompt | None = None,
    use_graph: bool | None = None,
    dtype: torch.dtype | None | str = "auto",
    compile_backend: str | None = "auto",
) -> SampleOutput:
    """The graph path of :func:`codefusion.sampling.sample` (cached K/V always).

    ``use_graph`` None: a CUDA graph on CUDA. ``dtype`` "auto": N runs as a bf16 copy on CUDA
    where supported, else N itself in fp32 (None); D runs once, under autocast in that dtype.
    ``compile_backend`` "auto": the step is compiled with inductor before capture on CUDA
    (unless ``CODEFUSION_COMPILE_SAMPLER=0``), not elsewhere (None); tests pass "eager" to check
    that it traces as one graph. With ``use_graph=False, dtype=None, compile_backend=None`` it
    runs the captured step function eagerly in fp32 and equals the plain loop (the CPU test of
    the graph path's logic)."""
    dev = enc.device
    if use_graph is None:
        use_graph = dev.type == "cuda"
    if dtype == "auto":
        bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else None
    if compile_backend == "auto":
        # Compiling costs seconds once per shape (less from inductor's on-disk cache): a
        # single short generate call may rather skip it (CODEFUSION_COMPILE_SAMPLER=0).
        wanted = os.environ.get("CODEFUSION_COMPILE_SAMPLER", "1") not in ("0", "")
        compile_backend = "inductor" if dev.type == "cuda" and wanted else None
    # The same draws as the plain loop: x_T (or the edit's x_t0), then guidance's ξ.
    prep = prepare(
        model, schedule, enc, cross_mask, num_draws, generator, options, known, start, prompt
    )
    x, plan = prep.x, prep.plan

    def amp() -> torch.autocast:
        return torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None)

    with amp():
        kv_d = model.decoder.cross_kv(enc)
    if len(plan) == 0:  # an edit at t0 = 0: no step, D reads L(code)
        with amp():
            tokens, scores = decode_tokens(model, x, kv_d, cross_mask, known, prompt)
        return SampleOutput(tokens, scores, [])
    net = model.denoiser if dtype is None else low_precision_denoiser(model, dtype)
    kv_n = net.cross_kv(prep.enc_n.to(next(net.parameters()).dtype))  # once per call
    s = enc.shape[1]
    prompt_len = prompt_bucket(s, model.config.max_prompt_len)
    masked = prep.mask_n is not None or prompt_len != s
    cond = prep.conditioning(kv_n)
    if cond.prompt is not None:  # the pointer's keys come from E(s) in N's dtype
        cond.prompt = cond.prompt._replace(enc=cond.prompt.enc.to(next(net.parameters()).dtype))
    runner = _denoise_step_for(
        model,
        net,
        prep.spec,
        x.shape[0],
        kv_n,
        prompt_len,
        x.dtype,
        options.eta > 0,
        use_graph,
        masked,
        compile_backend,
        cond.prompt,
    )
    runner.load(x, cond)
    trace: list[tuple[int, torch.Tensor]] = []
    for i, t in enumerate(plan.ts):
        runner.t.copy_(plan.t[i])  # 0-d -> [N]
        runner.coef.copy_(plan.coef[i])
        if runner.noise is not None and i < len(plan) - 1:
            # The plain loop's order: the step's z before its model call (which draws nothing).
            runner.noise.copy_(
                torch.randn(
                    runner.noise.shape, generator=generator, device=dev, dtype=runner.noise.dtype
                )
            )
        runner()
        if trace_at is not None and t in trace_at:
            with amp():
                trace.append(
                    (t, decode_tokens(model, runner.x0, kv_d, cross_mask, known, prompt)[0])
                )
    with amp():
        # x̂0 of the last step (t = 0)
        tokens, scores = decode_tokens(model, runner.x0, kv_d, cross_mask, known, prompt)
    return SampleOutput(tokens, scores, trace)
