"""The CUDA-graph runner: the plain sampler's step, captured once and replayed for every step.

Taken by :func:`codefusion.sampling.sample` with ``fast`` on CUDA and cached K/V. The loop has
fixed shapes, so one denoising step (N's forward and the DDIM update, :func:`ddim.ddim_step`) is
compiled (``torch.compile``) and captured once as a CUDA graph over static buffers, and replayed
for every step; the timestep and the step's coefficients (a row of :class:`ddim.StepPlan`) are
device tensors copied into the graph's inputs before each replay, so one graph serves every step
of every call of the same shape. N runs as a bf16 copy of itself (:func:`low_precision_denoiser`,
refreshed from the model's weights at each call), not under autocast: autocast inside a graph
must re-cast every weight at every replay (its cast cache is off under capture), a third of the
step's kernels. The DDIM update stays fp32. ``eta > 0`` works: each step's noise is drawn from
the caller's generator into a static buffer before the replay, in the plain loop's order. Prompt
K/V are padded to a bucket of prompt lengths (powers of two), masked only when the bucket or the
batch has padding: without a mask SDPA can take the flash kernel. Classifier-free guidance
(``guidance`` ≠ 1) captures the step on 2N rows of K/V (conditional, then unconditional) and
keeps w in a buffer; an edit (``strength``) loads the input's x_t0 instead of x_T and replays
only the plan's steps below t0 (none at t0 = 0: D reads L(code) directly). Both set up through
:func:`ddim.prepare`, as the plain loop does.

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

from codefusion.model import KV, CodeFusionModel, Denoiser
from codefusion.sampling import ddim
from codefusion.sampling.ddim import Known, SampleOutput, StepCoef
from codefusion.sampling.options import SamplingOptions
from codefusion.schedule import SqrtSchedule


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


def prompt_bucket(prompt_len: int, max_prompt_len: int) -> int:
    """The K/V length of the fast path's static buffers for prompts of ``prompt_len`` tokens:
    the next power of two (at least 8), at most ``max(max_prompt_len, prompt_len)``. A few
    graphs cover every length, and a prompt whose length is a bucket needs no mask."""
    bucket = 8
    while bucket < prompt_len:
        bucket *= 2
    return min(bucket, max(max_prompt_len, prompt_len))


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

    ``step`` is the function the CUDA graph captures (compiled first where
    ``compile_backend`` says): it computes :func:`ddim.ddim_step` on ``x`` at ``t`` with
    ``coef`` (one row of the plan, :class:`ddim.StepCoef`'s fields; and ``noise``), writes x̂0
    to ``x0`` and x_t' over ``x``. Between replays only the
    buffers' contents change, never their addresses: :meth:`load` fills the per-call ones (x_T,
    N's cross-attention K/V padded to ``prompt_len``, the clamping table), the sampler the
    per-step ones (``t``, ``coef``, ``noise``). ``net`` is N or its low-precision copy, whose
    weights the graph reads by address (kept alive here); no reference to the model is kept.
    ``masked`` False: no cross-attention mask at all (no padded key in any call of this shape).
    """

    def __init__(
        self,
        model: CodeFusionModel,
        net: Denoiser,
        kv: list[KV],  # this call's K/V: shapes and dtype of the static copies
        prompt_len: int,
        x_dtype: torch.dtype,
        clamp: bool,
        with_noise: bool,
        with_known: bool = False,
        masked: bool = True,
        compile_backend: str | None = None,
        guided: bool = False,
        guided_self: str = "own",
    ) -> None:
        cfg = model.config
        self.net, self.prediction_x0 = net, cfg.prediction == "x0"
        self.self_condition = cfg.self_condition
        self.guided_self = guided_self
        k0 = kv[0][0]
        rows, dev = k0.shape[0], k0.device  # K/V rows: 2N with guidance
        n = rows // 2 if guided else rows
        self.x = torch.zeros((n, cfg.code_len, cfg.latent_dim), dtype=x_dtype, device=dev)
        self.x0 = torch.zeros_like(self.x)
        # The self-conditioning input: x0 itself, or both halves' own estimates (guidance).
        own = guided and guided_self == "own"
        self.x0_self = torch.zeros_like(self.x).repeat(2, 1, 1) if own else self.x0
        self.guidance = torch.ones((), dtype=torch.float32, device=dev) if guided else None
        self.t = torch.zeros((n,), dtype=torch.long, device=dev)
        self.coef = torch.ones((len(StepCoef._fields),), dtype=torch.float32, device=dev)
        self.noise = torch.zeros_like(self.x) if with_noise else None
        self.known_mask = (
            torch.zeros((n, cfg.code_len, 1), dtype=torch.bool, device=dev) if with_known else None
        )
        self.known_x0 = torch.zeros_like(self.x) if with_known else None
        self.kv = [
            tuple(
                torch.zeros((rows, a.shape[1], prompt_len, a.shape[3]), dtype=a.dtype, device=dev)
                for a in pair
            )
            for pair in kv
        ]
        self.mask = (
            torch.ones((rows, 1, 1, prompt_len), dtype=torch.bool, device=dev) if masked else None
        )
        self.table = (
            torch.zeros((cfg.vocab_size, cfg.latent_dim), dtype=x_dtype, device=dev)
            if clamp
            else None
        )
        self.graph: torch.cuda.CUDAGraph | None = None
        self.compiled = False
        self._run = self.step
        if compile_backend is not None:
            try:
                self._run = torch.compile(self.step, backend=compile_backend, fullgraph=True)
                self.compiled = True
            except Exception as e:  # e.g. no compiler for this platform
                _fast_path_failed("compiling the denoising step", e)

    def load(
        self,
        x: torch.Tensor,
        kv: list[KV],
        cross_mask: torch.Tensor | None,
        table: torch.Tensor | None,
        known_mask: torch.Tensor | None = None,
        known_x0: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> None:
        """Copy one call's inputs into the static buffers (the prompt's K/V into the first
        ``s`` positions; the rest zeroed and masked out). x̂0 starts at zero: the first step's
        self-conditioning input."""
        s = kv[0][0].shape[2]
        for static, pair in zip(self.kv, kv, strict=True):
            for buf, a in zip(static, pair, strict=True):
                buf[:, :, :s].copy_(a)
                buf[:, :, s:].zero_()
        if self.mask is not None:
            self.mask.zero_()
            if cross_mask is None:
                self.mask[..., :s] = True
            else:
                self.mask[..., :s].copy_(cross_mask.expand(self.mask.shape[0], 1, 1, s))
        elif cross_mask is not None or s != self.kv[0][0].shape[2]:
            raise ValueError("an unmasked step takes unpadded prompts of its bucket's length")
        self.x.copy_(x)
        self.x0.zero_()
        self.x0_self.zero_()
        if self.guidance is not None:
            self.guidance.copy_(guidance)
        if self.table is not None:
            self.table.copy_(table)
        if self.known_mask is not None:
            self.known_mask.copy_(known_mask)
            self.known_x0.copy_(known_x0)

    def step(self, model: CodeFusionModel) -> None:
        """The captured function: one :func:`ddim.ddim_step` from and into the static buffers,
        N in its own dtype (no autocast) and the update in ``x``'s."""
        out = ddim.ddim_step(
            model,
            self.x,
            self.t,
            StepCoef.of(self.coef),
            self.kv,
            self.mask,
            self.table,
            self.noise,
            x0_prev=self.x0_self if self.self_condition else None,
            known_mask=self.known_mask,
            known_x0=self.known_x0,
            denoiser=self.net,
            guidance=self.guidance,
            guided_self=self.guided_self,
        )
        self.x0.copy_(out.x0)
        if self.x0_self is not self.x0:
            self.x0_self.copy_(out.x0_self)
        self.x.copy_(out.x_prev)  # after every read of x: kernels run in stream order

    def warm_up(self, model: CodeFusionModel, runs: int = 2) -> None:
        """Run the step (compiling it, where it is compiled) before any capture or timing. A
        compilation that fails here falls back to the eager step (see strict_graphs)."""
        try:
            for _ in range(runs):
                self._run(model)
        except GraphCaptureError:
            raise
        except Exception as e:
            if not self.compiled:
                raise
            _fast_path_failed("compiling the denoising step", e)
            self._run, self.compiled = self.step, False
            for _ in range(runs):
                self._run(model)

    def capture(self, model: CodeFusionModel, warmup: int = 2) -> None:
        """Record the step into a CUDA graph. Warm-up runs on a side stream first (lazy
        cuBLAS/SDPA initialisation, Triton and torch.compile compilation must not happen during
        capture); their results are overwritten by :meth:`load`."""
        dev = self.x.device
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            self.warm_up(model, warmup)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._run(model)
        self.graph = graph

    def __call__(self, model: CodeFusionModel) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run(model)


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
    kv: list[KV],
    prompt_len: int,
    x_dtype: torch.dtype,
    clamp: bool,
    with_noise: bool,
    use_graph: bool,
    with_known: bool = False,
    masked: bool = True,
    compile_backend: str | None = None,
    guided: bool = False,
    guided_self: str = "own",
) -> DenoiseStep:
    k0 = kv[0][0]
    net_dtype = next(net.parameters()).dtype
    key = (
        tuple(k0.shape[:2]) + (prompt_len, k0.dtype, k0.device, x_dtype, net_dtype),
        (clamp, with_noise, use_graph, model.training, with_known, masked, compile_backend),
        (guided, guided_self if guided else None),
        tuple(p.data_ptr() for p in model.denoiser.parameters()),
        id(net),
    )
    cache = _STEPS.setdefault(model, {})
    runner = cache.pop(key, None)
    if runner is None:
        runner = DenoiseStep(
            model,
            net,
            kv,
            prompt_len,
            x_dtype,
            clamp,
            with_noise,
            with_known,
            masked,
            compile_backend,
            guided,
            guided_self,
        )
        if use_graph:
            try:
                runner.capture(model)
            except GraphCaptureError:
                raise
            except Exception as e:  # an op that cannot be captured: still correct, eagerly
                _fast_path_failed("CUDA graph capture", e)
                runner.graph = None
        else:
            runner.warm_up(model, runs=1 if runner.compiled else 0)
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
    generator: torch.Generator,
    options: SamplingOptions,
    known: Known | None = None,
    trace_at: set[int] | None = None,
    use_graph: bool | None = None,
    dtype: torch.dtype | None | str = "auto",
    compile_backend: str | None = "auto",
    start: torch.Tensor | None = None,
) -> SampleOutput:
    """The graph path of :func:`codefusion.sampling.sample` (cached K/V always).

    ``use_graph`` None: a CUDA graph on CUDA. ``dtype`` "auto": N runs as a bf16 copy on CUDA
    where supported, else N itself in fp32 (None); D runs once, under autocast in that dtype.
    ``compile_backend`` "auto": the step is compiled with inductor before capture on CUDA
    (unless ``CODEFUSION_COMPILE_SAMPLER=0``), not elsewhere (None); tests pass "eager" to check
    that it traces as one graph. With ``use_graph=False, dtype=None, compile_backend=None`` it
    runs the captured step function eagerly in fp32 and equals the plain loop (the CPU test of
    the graph path's logic)."""
    cfg = model.config
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
    prep = ddim.prepare(model, schedule, enc, cross_mask, generator, options, start)
    x, plan = prep.x, prep.plan

    def amp() -> torch.autocast:
        return torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None)

    with amp():
        kv_d = model.decoder.cross_kv(enc)
    if len(plan) == 0:  # an edit at t0 = 0: no step, D reads L(code)
        with amp():
            tokens, scores = ddim.decode_tokens(model, x, kv_d, cross_mask, known)
        return SampleOutput(tokens, scores, [])
    net = model.denoiser if dtype is None else low_precision_denoiser(model, dtype)
    kv_n = net.cross_kv(prep.enc_n.to(next(net.parameters()).dtype))  # once per call
    table = None
    if options.clamp:
        table = model.embed_code(torch.arange(cfg.vocab_size, device=dev))
    s = enc.shape[1]
    prompt_len = prompt_bucket(s, cfg.max_prompt_len)
    masked = prep.mask_n is not None or prompt_len != s
    known_mask, known_x0 = ddim.known_inputs(model, known)
    guided = prep.guidance is not None
    runner = _denoise_step_for(
        model,
        net,
        kv_n,
        prompt_len,
        x.dtype,
        options.clamp,
        options.eta > 0,
        use_graph,
        known is not None,
        masked,
        compile_backend,
        guided,
        options.guidance_self_condition,
    )
    runner.load(x, kv_n, prep.mask_n, table, known_mask, known_x0, prep.guidance)
    trace: list[tuple[int, torch.Tensor]] = []
    for i, t in enumerate(plan.ts):
        runner.t.copy_(plan.t[i])  # 0-d -> [N]
        runner.coef.copy_(plan.coef[i])
        if runner.noise is not None and i < len(plan) - 1:
            # The plain loop draws after the model call; the model draws nothing, so drawing
            # before the replay consumes the generator in the same order.
            runner.noise.copy_(
                torch.randn(
                    runner.noise.shape,
                    generator=generator,
                    device=dev,
                    dtype=runner.noise.dtype,
                )
            )
        runner(model)
        if trace_at is not None and t in trace_at:
            with amp():
                trace.append((t, ddim.decode_tokens(model, runner.x0, kv_d, cross_mask, known)[0]))
    with amp():
        # x̂0 of the last step (t = 0)
        tokens, scores = ddim.decode_tokens(model, runner.x0, kv_d, cross_mask, known)
    return SampleOutput(tokens, scores, trace)
