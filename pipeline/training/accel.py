"""Speed settings that leave results alone: mixed precision (GPU and CPU), torch.compile, DDP hookup.

Precision (`RunConfig.precision`):
    fp32   plain float32 everywhere.
    bf16   autocast to bfloat16 for matmuls, LSTM layers and attention (forward and backward);
           weights, optimizer state, losses and metrics stay float32. On a GPU without bf16,
           float16 with dynamic loss scaling instead.
    auto   GPU: bf16 where supported, else fp16. CPU: the backbone's `cpu_bf16` registry flag
           (set from the side-by-side measurement in BENCHMARKS.md: bf16 only where it was faster
           at <= 1 % validation-loss difference) and only on CPUs whose own flags list native bf16
           (avx512_bf16 / amx_bf16). Emulated bf16 (AVX-512 without them) is 0.42x fp32: never chosen.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.torch_core import to_float

from pipeline.training import ranks

# The x86 flags of native bf16 dot products (AVX512-BF16's vdpbf16ps, AMX tiles). oneDNN's own
# check (`torch.ops.mkldnn._is_mkldnn_bf16_supported`) also says yes on AVX-512 CPUs without them,
# where it emulates bf16: measured there at 0.42x fp32 (AWD-LSTM) and 0.43x (gpt), BENCHMARKS.md.
# Arm's bf16 is not listed: unmeasured here, so auto stays fp32 on it.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@lru_cache(maxsize=1)
def _cpuinfo() -> str | None:
    """/proc/cpuinfo's text, read once; None where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the kernel lists them (/proc/cpuinfo); empty where there is none."""
    return parse_flags(_cpuinfo() or "")


def parse_flags(cpuinfo: str) -> frozenset[str]:
    """The first "flags" (x86) or "Features" (Arm) line of a /proc/cpuinfo text, as a set."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model() -> str:
    """"AMD EPYC (family 25, model 17; bf16 flags: avx512_bf16)": what BENCHMARKS.md names per figure."""
    if _cpuinfo() is None:
        import platform

        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    bf16 = sorted(flag for flag in cpu_flags() if "bf16" in flag) or ["none"]
    return (f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}; bf16 flags: {', '.join(bf16)})")


def cpu_has_bf16() -> bool:
    """Native bf16 on this CPU: its own flags say so (never oneDNN's check alone, which counts emulation)
    and torch's oneDNN can use it."""
    return bool(NATIVE_BF16_FLAGS & cpu_flags()) and _onednn_bf16()


def _onednn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(choice: str, backbone, device: torch.device) -> str:
    """"fp32" or "bf16" (CPU), "fp32" / "bf16" / "fp16" (CUDA) for this backbone on this device."""
    if device.type == "cuda":
        if choice == "fp32":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if choice == "auto":
        return "bf16" if backbone.cpu_bf16 and cpu_has_bf16() else "fp32"
    return choice


class CPUAutocast(Callback):
    """bf16 autocast on CPU around the forward pass and the loss (fastai's MixedPrecision is CUDA-only).

    The backward pass follows the autocast graph; master weights and Adam's state stay float32,
    and bf16 has float32's exponent range, so no loss scaling is needed."""

    order = 10  # as fastai's MixedPrecision: after the data callbacks, before the model call

    def __init__(self):
        self.ctx = None

    def before_batch(self):
        self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
        self.ctx.__enter__()

    def after_pred(self):
        self.learn.pred = to_float(self.pred)

    def after_loss(self):
        self._leave()

    def after_cancel_batch(self):
        self._leave()

    def _leave(self):
        if self.ctx is not None:
            self.ctx.__exit__(None, None, None)
            self.ctx = None


def mixed_precision(learn, device: torch.device, precision: str):
    """Attach the callback for `precision` (already resolved): bf16/fp16 on CUDA, bf16 on CPU."""
    if precision == "fp32":
        return learn
    if device.type == "cuda":
        import fastai.callback.fp16  # noqa: F401  (patches Learner.to_fp16 / to_bf16)

        return learn.to_bf16() if precision == "bf16" else learn.to_fp16()
    learn.add_cb(CPUAutocast())
    return learn


def inference_autocast(device: torch.device, precision: str):
    """The autocast context a Learner prepared by `mixed_precision` runs its forward pass in, for
    code that calls the model outside the Learner (the head's probe start reads the features the
    classifier will see)."""
    import contextlib

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def wants_compile(compile_flag: bool, backbone, device: torch.device) -> bool:
    """torch.compile only on request, on CUDA, for backbones whose registry entry says it helps."""
    return compile_flag and device.type == "cuda" and backbone.compilable


def prepare(learn, device: torch.device, compile_model: bool = False, precision: str = "fp32"):
    """Everything make_learner adds beyond the plain fp32 Learner; a no-op on one CPU process in fp32."""
    if compile_model:
        learn.model.compile()  # in place: state_dict keys stay those of the plain module
    if ranks.is_distributed():
        from pipeline.training.ddp_callback import DDPCallback

        learn.add_cb(DDPCallback())
    return mixed_precision(learn, device, precision)
