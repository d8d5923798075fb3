"""Speed settings that leave results alone: mixed precision (GPU and CPU), torch.compile, DDP hookup.

Precision (`RunConfig.precision`):
    fp32   plain float32 everywhere.
    bf16   autocast to bfloat16 for matmuls, LSTM layers and attention (forward and backward);
           weights, optimizer state, losses and metrics stay float32. On a GPU without bf16,
           float16 with dynamic loss scaling instead.
    auto   GPU: bf16 where supported, else fp16. CPU: the backbone's `cpu_bf16` registry flag
           (set from the side-by-side measurement in BENCHMARKS.md: bf16 only where it was faster
           at <= 1 % validation-loss difference) and only on CPUs with native bf16 (AVX512-BF16/AMX).
"""
from __future__ import annotations

import torch
from fastai.callback.core import Callback
from fastai.torch_core import to_float

from pipeline import distributed


def cpu_has_bf16() -> bool:
    """Native bf16 dot products (oneDNN's check: AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
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


def wants_compile(compile_flag: bool, backbone, device: torch.device) -> bool:
    """torch.compile only on request, on CUDA, for backbones whose registry entry says it helps."""
    return compile_flag and device.type == "cuda" and backbone.compilable


def prepare(learn, device: torch.device, compile_model: bool = False, precision: str = "fp32"):
    """Everything make_learner adds beyond the plain fp32 Learner; a no-op on one CPU process in fp32."""
    if compile_model:
        learn.model.compile()  # in place: state_dict keys stay those of the plain module
    if distributed.is_distributed():
        from pipeline.ddp import DDPCallback

        learn.add_cb(DDPCallback())
    return mixed_precision(learn, device, precision)
