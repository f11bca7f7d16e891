"""Kernel settings are model settings: ``from_backbone(kernel=...)`` reaches every condensation
kernel call of the model (text layers and a vision tower), is saved in ``btok_config.json``,
comes back with ``from_pretrained``, and leaves the ``BTOK_*`` environment variables only the
fields it does not set."""

import json

import pytest
import torch

from btok_model import BTokModel, KernelSettings
from btok_model.backend import attention
from tests.helpers.tiny import EXAMPLES, image, tiny_btok, tiny_vl_btok

TEXTS = ["what is a cat?", "paris", "a much longer text about nothing"]


@pytest.fixture(autouse=True)
def no_kernel_environment(monkeypatch):
    for name in ("BTOK_BACKEND", "BTOK_FUSED_DQ", "BTOK_AUTOTUNE", "BTOK_PADDING_MODE"):
        monkeypatch.delenv(name, raising=False)


def reference_kernel_calls(model, inputs) -> int:
    """How many ``btok::condensation_fwd`` ops (the custom op the ``"reference"`` backend runs;
    ``"sdpa"`` calls PyTorch's fused attention instead) one ``encode`` of ``inputs`` runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model.encode(inputs)
    return sum(event.name == "btok::condensation_fwd" for event in prof.events())


def test_text_model_kernel_backend_is_chosen_saved_and_reloaded(tmp_path, monkeypatch):
    reference = tiny_btok(kernel={"backend": "reference"})
    sdpa = tiny_btok(kernel=KernelSettings(backend="sdpa"))
    assert reference.config.kernel == KernelSettings(backend="reference")
    assert reference_kernel_calls(reference, TEXTS) == 2  # one per decoder layer
    assert reference_kernel_calls(sdpa, TEXTS) == 0
    # the same weights: the two backends compute the same attention
    torch.testing.assert_close(reference.encode(TEXTS), sdpa.encode(TEXTS), rtol=1e-5, atol=1e-6)

    reference.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "btok_config.json").read_text())["kernel"]
    assert saved == {"backend": "reference", "fused_dq": None, "autotune": None, "padding_mode": None}
    assert reference_kernel_calls(BTokModel.from_pretrained(tmp_path), TEXTS) == 2
    assert reference_kernel_calls(BTokModel.from_pretrained(tmp_path, kernel={"backend": "sdpa"}), TEXTS) == 0

    # The environment fills only what the settings leave unset.
    monkeypatch.setenv("BTOK_BACKEND", "reference")
    assert reference_kernel_calls(tiny_btok(), TEXTS) == 2
    assert reference_kernel_calls(sdpa, TEXTS) == 0


def test_vision_tower_runs_with_the_model_kernel_settings(tmp_path):
    """Qwen2-VL's vision blocks (bidirectional layouts) take the model's backend too."""
    model = tiny_vl_btok("qwen2_vl", video=False, kernel={"backend": "reference"})
    photo = [{"text": "a cat", "image": image(28, 56, 1)}]
    assert reference_kernel_calls(model, ["a cat"]) == 2  # the 2 text layers
    assert reference_kernel_calls(model, photo) == 4  # + the 2 vision blocks (one image)
    model.save_pretrained(tmp_path)
    assert reference_kernel_calls(BTokModel.from_pretrained(tmp_path), photo) == 4
    sdpa = tiny_vl_btok("qwen2_vl", video=False, kernel={"backend": "sdpa"})
    assert reference_kernel_calls(sdpa, photo) == 0


def test_every_setting_reaches_the_kernel_and_the_padding(monkeypatch):
    """Each kernel call of a training step and of a padded encode gets the Triton options; the
    padded rows are laid out in the set padding mode (``unpad``: gathered, an index returned)."""
    calls, layouts = [], []
    kernel, padding_layout = attention.condensation_attention, attention.padding_layout

    def recording_kernel(*args, **kwargs):
        calls.append({key: kwargs[key] for key in ("backend", "fused_dq", "autotune")})
        return kernel(*args, **kwargs)

    def recording_padding(mask, mode="auto", causal=True):
        out = padding_layout(mask, mode, causal)
        layouts.append((mode, out[1] is not None))
        return out

    monkeypatch.setattr(attention, "condensation_attention", recording_kernel)
    monkeypatch.setattr(attention, "padding_layout", recording_padding)
    settings = {"backend": "sdpa", "fused_dq": True, "autotune": False, "padding_mode": "unpad"}
    model = tiny_btok(kernel=settings)
    model(model.collate(EXAMPLES)).loss.backward()
    model.encode(TEXTS, packed=False)
    assert len(calls) == 4 and all(c == {"backend": "sdpa", "fused_dq": True, "autotune": False} for c in calls)
    assert layouts == [("unpad", True)] * 2  # one per layer: encode's inference tensors are not memoized
    calls.clear()
    tiny_btok().encode(TEXTS)  # unset settings: the kernel's own defaults (the environment's, here none)
    assert calls == [{"backend": "auto", "fused_dq": None, "autotune": None}] * 2
