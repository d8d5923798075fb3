"""GPU speed settings that leave the CPU path untouched: mixed precision, torch.compile, DDP hookup."""
from __future__ import annotations

import torch

from pipeline import distributed


def mixed_precision(learn, device: torch.device):
    """bf16 autocast where the GPU supports it (no loss scaling needed: bf16 has fp32's range),
    else fp16 with dynamic loss scaling (fastai's MixedPrecision uses torch's GradScaler)."""
    if device.type != "cuda":
        return learn
    import fastai.callback.fp16  # noqa: F401  (patches Learner.to_fp16 / to_bf16)

    return learn.to_bf16() if torch.cuda.is_bf16_supported() else learn.to_fp16()


def wants_compile(compile_flag: bool, backbone, device: torch.device) -> bool:
    """torch.compile only on request, on CUDA, for backbones whose registry entry says it helps."""
    return compile_flag and device.type == "cuda" and backbone.compilable


def prepare(learn, device: torch.device, compile_model: bool = False):
    """Everything make_learner adds beyond the plain CPU Learner; a no-op on one CPU process."""
    if compile_model:
        learn.model.compile()  # in place: state_dict keys stay those of the plain module
    if distributed.is_distributed():
        from pipeline.ddp import DDPCallback

        learn.add_cb(DDPCallback())
    return mixed_precision(learn, device)
