"""How much work one step dispatches: aten ops, kernels, casts, copies and host reads.

A step that launches more kernels than its arithmetic can hide is bound by the host: at the
paper's sizes a training step of batch 64 is ~6 ms of math at 35% MFU, and a sampling step
well under a millisecond. :func:`count_ops` runs a function twice, once under each counter:

- ``dispatched`` (eager code; a ``TorchDispatchMode`` below autograd and autocast): the aten ops
  that do work, i.e. not views and bare allocations (``aten.t``, ``aten.empty_strided``, ...),
  so roughly one per kernel a GPU would launch; with ``casts`` (``_to_copy``: dtype
  conversions, autocast's included), ``copies`` (``clone``: ``.contiguous()`` and friends) and
  ``host_reads`` (``_local_scalar_dense``, ``nonzero``: ``.item()``, ``bool(t)``,
  data-dependent shapes, each of which waits for the GPU to drain its queue). torch.compile
  does not run compiled code under a dispatch mode, so this counter is null for compiled
  functions;
- ``profiled`` (``torch.profiler``, eager and compiled alike): aten ops called from Python or
  from compiled code (the outermost aten event of each call, views and allocations left out;
  an op that calls others, ``aten::linear`` or autocast's casts inside it, counts once)
  plus fused kernels of compiled code (inductor's C++ kernels on CPU, recorded when
  ``torch._inductor.config.cpp.enable_kernel_profile`` was set before compiling);
- ``kernels``: device kernels recorded by the profiler (CUDA only, else null).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

_ALLOCATIONS = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided"}
_HOST_READS = {"_local_scalar_dense", "nonzero"}


@cache
def launches_nothing(name: str) -> bool:
    """Views and bare allocations (by aten name): ops that dispatch but compute nothing."""
    if name in _ALLOCATIONS:
        return True
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return False
    overloads = [getattr(packet, o) for o in packet.overloads()]
    return bool(overloads) and all(o.is_view for o in overloads)


class _Dispatched(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func._overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_dispatched(fn: Callable[[], Any]) -> dict[str, Any]:
    mode = _Dispatched()
    with mode:
        fn()
    work = Counter({k: v for k, v in mode.ops.items() if not launches_nothing(k)})
    return {
        "ops": sum(work.values()),
        "casts": mode.ops["_to_copy"],
        "copies": mode.ops["clone"],
        "host_reads": sum(mode.ops[k] for k in _HOST_READS),
        "top": dict(work.most_common(6)),
    }


def count_profiled(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    calls = fused = kernels = 0
    for e in prof.events():
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
            kernels += 1
        elif "cpp_fused" in e.name:
            fused += 1
        elif e.name.startswith(("aten::", "cfbench::")):
            parent = e.cpu_parent
            while parent is not None and not parent.name.startswith(("aten::", "cfbench::")):
                parent = parent.cpu_parent
            name = e.name.split("::", 1)[1]
            if parent is None and not (e.name.startswith("aten::") and launches_nothing(name)):
                calls += 1
    return {
        "ops": calls + fused,
        "aten_calls": calls,
        "fused_kernels": fused,
        "kernels": kernels if device.type == "cuda" else None,
    }


def count_ops(
    fn: Callable[[], Any], device: torch.device | str, compiled: bool = False
) -> dict[str, Any]:
    """Both counts of one call of ``fn`` (call it before, to leave compilation and lazy
    initialisation out). ``compiled``: ``fn`` runs compiled code (no dispatch-mode count)."""
    device = torch.device(device)
    return {
        "dispatched": None if compiled else count_dispatched(fn),
        "profiled": count_profiled(fn, device),
    }


_ADALN = None


def _adaln_op():
    """``codefusion.kernels.reference.modulated_layer_norm`` registered as one custom op."""
    global _ADALN
    if _ADALN is None:
        from codefusion.kernels import reference

        @torch.library.custom_op("cfbench::modulated_layer_norm", mutates_args=())
        def adaln(
            x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
        ) -> torch.Tensor:
            return reference.modulated_layer_norm(x, shift, scale, eps)

        _ADALN = adaln
    return _ADALN


@contextlib.contextmanager
def adaln_as_one_kernel(copy_inputs: bool = False):
    """Within this block (no autograd) N's adaLN counts as one op, as the fused Triton kernel
    is one launch on a GPU, where the CPU reference dispatches several. ``copy_inputs``: as the
    kernel's wrapper did before this change, ``.contiguous()`` of x, shift and scale first
    (shift and scale are slices of the modulation: two copies per norm)."""
    import codefusion.model as model_mod

    op, real = _adaln_op(), model_mod.modulated_layer_norm

    def fused(x, shift, scale, eps=1e-5):
        if copy_inputs:
            x, shift, scale = x.contiguous(), shift.contiguous(), scale.contiguous()
        return op(x, shift, scale, float(eps))

    model_mod.modulated_layer_norm = fused
    try:
        yield
    finally:
        model_mod.modulated_layer_norm = real
