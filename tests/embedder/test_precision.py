"""The one dtype decision: bfloat16 where the device computes it natively, else float32 with the reason."""

import pytest
import torch

from btok_model import BTokModel
from btok_model.embedder import precision
from btok_model.embedder.backbone import transformers_model
from btok_model.embedder.precision import (
    choose_dtype,
    native_cpu_bf16,
    parse_dtype,
    resolve_dtype,
    training_precision,
)
from tests.helpers.tiny import char_tokenizer, tiny_backbone

X86_NO_BF16 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
X86_AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
X86_AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16 amx_int8\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
ARM_NO_BF16 = "processor\t: 0\nFeatures\t: fp asimd evtstrm\n"


@pytest.mark.parametrize(
    "text, native, why",
    [
        (X86_NO_BF16, False, "no avx512_bf16 or amx_bf16"),
        (X86_AVX512_BF16, True, "avx512_bf16"),
        (X86_AMX, True, "amx_bf16"),
        (ARM_BF16, True, "bf16"),
        (ARM_NO_BF16, False, "no avx512_bf16"),
    ],
    ids=["avx2", "avx512_bf16", "amx", "arm-bf16", "arm"],
)
def test_cpu_flags(tmp_path, text, native, why):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    got, reason = native_cpu_bf16(str(cpuinfo), environ={})
    assert got is native and why in reason


@pytest.mark.parametrize(
    "env, why",
    [
        ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "ONEDNN_MAX_CPU_ISA=AVX2"),
        ({"DNNL_MAX_CPU_ISA": "avx512_core_vnni"}, "DNNL_MAX_CPU_ISA=AVX512_CORE_VNNI"),
        ({"ATEN_CPU_CAPABILITY": "avx2"}, "ATEN_CPU_CAPABILITY=avx2"),
    ],
)
def test_environment_limits_count_as_not_native(tmp_path, env, why):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(X86_AMX)
    got, reason = native_cpu_bf16(str(cpuinfo), environ=env)
    assert not got and why in reason
    # Limits that still allow bf16 leave the answer to the flags.
    assert native_cpu_bf16(str(cpuinfo), environ={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"})[0]
    assert native_cpu_bf16(str(cpuinfo), environ={"ATEN_CPU_CAPABILITY": "avx512"})[0]


def test_unreadable_flags_mean_float32(tmp_path):
    got, reason = native_cpu_bf16(str(tmp_path / "missing"), environ={})
    assert not got and "cannot read" in reason


def _cpu(monkeypatch, native: bool):
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: (native, "mocked flags"))


def test_cpu_choice_both_ways(monkeypatch):
    _cpu(monkeypatch, False)
    choice = choose_dtype("cpu")
    assert choice.dtype == torch.float32 and "would be emulated" in choice.reason and "mocked flags" in choice.reason
    assert choice.line.startswith("float32: ")
    _cpu(monkeypatch, True)
    assert choose_dtype("cpu").dtype == torch.bfloat16


@pytest.mark.parametrize("bf16", [True, False])
def test_cuda_choice(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    _cpu(monkeypatch, not bf16)  # the CPU's answer must not leak into the GPU's
    assert precision.default_device().type == "cuda"
    assert choose_dtype().dtype == (torch.bfloat16 if bf16 else torch.float32)


def test_explicit_dtype_wins(monkeypatch):
    _cpu(monkeypatch, False)
    assert resolve_dtype("bfloat16", "cpu").dtype == torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu").dtype == torch.float16
    assert resolve_dtype("auto", "cpu").dtype == "auto"
    assert resolve_dtype(None, "cpu").dtype == torch.float32
    assert parse_dtype("torch.bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="--torch-dtype must be a floating torch dtype"):
        parse_dtype("int8", "--torch-dtype")


@pytest.mark.parametrize("native", [True, False])
def test_from_backbone_by_name_follows_the_decision(tmp_path, monkeypatch, native):
    """Loading a backbone by name without dtype takes the decision; an explicit dtype wins;
    a saved BTok model reloads in the dtype it was saved in."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _cpu(monkeypatch, native)
    tiny_backbone("qwen2").save_pretrained(tmp_path / "backbone")
    model = BTokModel.from_backbone(str(tmp_path / "backbone"), tokenizer=char_tokenizer())
    assert transformers_model(model.backbone).dtype == (torch.bfloat16 if native else torch.float32)
    explicit = BTokModel.from_backbone(str(tmp_path / "backbone"), tokenizer=char_tokenizer(), dtype=torch.float32)
    assert transformers_model(explicit.backbone).dtype == torch.float32
    model.save_pretrained(tmp_path / "saved")
    _cpu(monkeypatch, not native)
    reloaded = BTokModel.from_pretrained(tmp_path / "saved")
    assert transformers_model(reloaded.backbone).dtype == transformers_model(model.backbone).dtype


@pytest.mark.parametrize("native", [True, False], ids=["native", "emulated"])
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_training_precision_weights(monkeypatch, native, lora):
    """The weights of a run: the decision, except float32 for full fine-tuning; an explicit dtype wins."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _cpu(monkeypatch, native)
    run = training_precision(None, full_finetuning=not lora, bf16=False)
    assert run.dtype == (torch.bfloat16 if native and lora else torch.float32) and run.bf16 is False
    assert ("full fine-tuning keeps float32 weights" in run.lines[0]) == (native and not lora)
    explicit = training_precision("bfloat16", full_finetuning=not lora, bf16=False, what="--torch-dtype")
    assert explicit.dtype == torch.bfloat16 and explicit.lines == ("weights: bfloat16 (--torch-dtype)",)
    with pytest.raises(ValueError, match="--torch-dtype must be a floating torch dtype"):
        training_precision("int8", full_finetuning=False, bf16=False, what="--torch-dtype")


@pytest.mark.parametrize("source", ["flag", "preset", "default"])
def test_training_precision_bf16_without_native_bfloat16(monkeypatch, source):
    """bf16 mixed precision asked for on a CPU without native bfloat16: kept with a warning when
    the user gave the flag, turned off (saying who asked) otherwise; kept where it is native."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _cpu(monkeypatch, False)
    run = training_precision(None, full_finetuning=False, bf16=True, bf16_from=source)
    assert run.bf16 == (source == "flag")
    said = "warning: --bf16 on a device" if source == "flag" else f"bf16 mixed precision off (asked by the {source})"
    assert run.lines[1].startswith(said)
    _cpu(monkeypatch, True)
    native = training_precision(None, full_finetuning=False, bf16=True, bf16_from=source)
    assert native.bf16 and len(native.lines) == 1
