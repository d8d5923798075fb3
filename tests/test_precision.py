"""precision=auto follows the CPU's own flags: bf16 only where it is native, never where oneDNN emulates it."""
from __future__ import annotations

import pytest
import torch

from pipeline.models.backbones import get_backbone
from pipeline.training import accel

# Trimmed /proc/cpuinfo lines of the two machines this project runs on.
INTEL_AVX512_NO_BF16 = ("model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz\n"
                        "flags\t\t: fpu sse2 avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni\n")
AMD_NATIVE_BF16 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS_AMX = "flags\t\t: avx512f amx_bf16 amx_tile amx_int8\n"
ARM_BF16 = "Features\t: fp asimd bf16 i8mm\n"


@pytest.fixture
def cpu(monkeypatch):
    """cpu(cpuinfo, onednn) -> this process sees that CPU; oneDNN's own check answers `onednn`."""
    def use(cpuinfo: str, onednn: bool = True) -> None:
        monkeypatch.setattr(accel, "cpu_flags", lambda: accel.parse_flags(cpuinfo))
        monkeypatch.setattr(accel, "_onednn_bf16", lambda: onednn)
    return use


@pytest.mark.parametrize("cpuinfo,native", [(INTEL_AVX512_NO_BF16, False), (AMD_NATIVE_BF16, True),
                                            (SAPPHIRE_RAPIDS_AMX, True), (ARM_BF16, False), ("", False)])
def test_native_bf16_comes_from_the_cpu_flags(cpu, cpuinfo, native):
    cpu(cpuinfo, onednn=True)  # oneDNN says yes on the Intel machine too: it emulates bf16 there
    assert accel.cpu_has_bf16() is native


def test_flags_without_onednn_support_stay_fp32(cpu):
    cpu(AMD_NATIVE_BF16, onednn=False)
    assert not accel.cpu_has_bf16()


@pytest.mark.parametrize("name", ["awd_lstm", "gpt", "bert"])
@pytest.mark.parametrize("cpuinfo,expected", [(INTEL_AVX512_NO_BF16, "fp32"), (AMD_NATIVE_BF16, "bf16")])
def test_auto_precision_on_each_machine(cpu, name, cpuinfo, expected):
    cpu(cpuinfo)
    backbone = get_backbone(name)
    assert backbone.cpu_bf16  # measured faster in native bf16 for all three (BENCHMARKS.md)
    assert accel.resolve_precision("auto", backbone, torch.device("cpu")) == expected
    # An explicit choice is kept on either machine.
    assert accel.resolve_precision("fp32", backbone, torch.device("cpu")) == "fp32"
    assert accel.resolve_precision("bf16", backbone, torch.device("cpu")) == "bf16"


def test_this_machine_is_described_for_benchmarks():
    if not accel.cpu_flags():
        pytest.skip("no /proc/cpuinfo flags on this OS")
    described = accel.cpu_model()
    assert "bf16 flags:" in described
    assert ("avx512_bf16" in described) == ("avx512_bf16" in accel.cpu_flags())
