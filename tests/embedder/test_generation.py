"""Decoding the bottleneck (``BTokModel.generate_from_btoks``): every generated step's logits
are the logits of the matching target row of a packed training pass over ``[input | BToks |
prefix + generated]`` under the condensation mask, on tiny Llama (text) and Qwen2-VL (an
image input, whose target positions start at the token count S, beyond the last BTok's
position + 1); controls show that seeing the input, or positions continuing after the last
BTok, would fail the check. Greedy output is reproducible and does not depend on the batch;
bad arguments raise naming them."""

import pytest
import torch

from btok_kernels import CondensationLayout
from btok_model import ExampleError
from btok_model.embedder import Target
from btok_model.embedder.backbone import transformers_model
from btok_model.embedder.media import MEDIA_BATCH_KEYS
from tests.helpers.numerics import rel_err
from tests.helpers.tiny import image, tiny_btok, tiny_vl_btok
from tests.helpers.twopass import TOL, continuing_positions

STEPS = 3  # generated tokens compared: the first (predicted by the last prefix row) and two more

# Longest input first: generate_from_btoks batches inputs in length order, so the LM head's
# rows are in this order too.
TEXTS = ["which river runs through the old town of prague?", "capital of france", "x"]


def vl_inputs():
    # The image is 2 x 3 merged patches: its M-RoPE positions advance by 3 for 6 tokens.
    return [{"text": "what is in the picture?", "image": image(56, 84, 1)}, "a plain text query"]


def generated_logits(model, inputs, **kwargs):
    """``(generated ids per input, LM-head logits fp32 [steps, N, V])`` of a greedy run."""
    seen = []
    head = transformers_model(model.backbone).get_output_embeddings()
    hook = head.register_forward_hook(lambda module, args, out: seen.append(out[:, -1].float()))
    try:
        _, ids = model.generate_from_btoks(
            inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, return_ids=True, **kwargs
        )
    finally:
        hook.remove()
    return ids, torch.stack(seen)


def packed_target_logits(model, inputs, generated, layout_of=None, positions_of=None):
    """fp32 ``[steps, N, V]``: the logits of each sequence's last prefix row and the target rows
    after it, in ONE packed pass over ``[input | BToks | prefix + generated]``.

    ``layout_of`` / ``positions_of`` replace the batch's layout / position ids (controls)."""
    collator = model.collator
    sequences, media = collator.encode_for_embedding(inputs)
    prefix = collator.prefix_ids
    targets = [Target(prefix + ids, [-100] * len(prefix) + ids) for ids in generated]
    batch = collator.pack_sequences(sequences, media, targets=targets)
    layout = layout_of(batch) if layout_of else batch["btok_layout"]
    positions = positions_of(batch) if positions_of else batch["position_ids"]
    pixels = {key: batch[key] for key in MEDIA_BATCH_KEYS if key in batch}
    with torch.no_grad():
        hidden = model._last_hidden_states(batch["input_ids"], positions, layout=layout, media=pixels)
        starts = torch.tensor(batch["btok_layout"].host_cu_seqlens[:-1]) + torch.tensor(
            batch["btok_layout"].host_target_start
        )
        rows = starts[None] + len(prefix) - 1 + torch.arange(STEPS)[:, None]  # [steps, N]
        head = transformers_model(model.backbone).get_output_embeddings()
        return head(hidden[rows.flatten()]).float().view(STEPS, len(inputs), -1)


def assert_matches_packed_pass(model, inputs):
    ids, logits = generated_logits(model, inputs)
    assert [len(x) for x in ids] == [STEPS] * len(inputs) and logits.shape[:2] == (STEPS, len(inputs))
    reference = packed_target_logits(model, inputs, ids)
    for step in range(STEPS):
        assert rel_err(logits[step], reference[step]) < TOL, f"step {step}"
    # Control: a target that sees its input (plain causal attention) gives other logits.
    causal = packed_target_logits(
        model, inputs, ids, layout_of=lambda b: CondensationLayout.causal(b["btok_layout"].cu_seqlens)
    )
    assert rel_err(logits, causal) > 1e-2
    return ids, logits


def test_generated_logits_equal_the_packed_target_rows_llama():
    model = tiny_btok("llama", lora=4)  # LoRA adapters and trainable BTok rows in the way
    assert_matches_packed_pass(model, TEXTS)


def test_generated_logits_equal_the_packed_target_rows_qwen2_vl_with_an_image():
    model = tiny_vl_btok("qwen2_vl")
    inputs = vl_inputs()
    ids, logits = assert_matches_packed_pass(model, inputs)
    # Control: the image query's target continuing right after its last BTok's position fails.
    moved = packed_target_logits(model, inputs, ids, positions_of=continuing_positions)
    assert rel_err(logits[:, 0], moved[:, 0]) > 1e-2
    assert rel_err(logits[:, 1], moved[:, 1]) < TOL  # the text query's positions do not move


def test_greedy_output_is_reproducible_and_independent_of_the_batch():
    model = tiny_btok("qwen2", lora=4)
    model.train()
    texts, ids = model.generate_from_btoks(TEXTS, max_new_tokens=6, min_new_tokens=2, return_ids=True)
    assert model.training, "the model's mode is restored"
    assert model.generate_from_btoks(TEXTS, max_new_tokens=6, min_new_tokens=2) == texts
    alone = [model.generate_from_btoks([t], max_new_tokens=6, min_new_tokens=2, return_ids=True) for t in TEXTS]
    assert [a[1][0] for a in alone] == ids and [a[0][0] for a in alone] == texts
    batched = model.generate_from_btoks(TEXTS, max_new_tokens=6, min_new_tokens=2, batch_size=2, return_ids=True)
    assert batched == (texts, ids)
    assert texts == [model.tokenizer.decode(x, skip_special_tokens=True) for x in ids]


def cut_at(ids: list[int], stop: list[int]) -> list[int]:
    """``ids`` up to and including the first occurrence of ``stop``."""
    for j in range(len(stop), len(ids) + 1):
        if ids[j - len(stop) : j] == stop:
            return ids[:j]
    return ids


def test_stops_at_the_target_suffix_one_or_several_tokens_or_eos():
    """Each row stops at its first target suffix (one token: the default ``<|im_end|>``, or
    two) or EOS id, cut from its text; the rows stop at different lengths."""
    kwargs = {"max_new_tokens": 8, "return_ids": True}
    # This random Qwen2 has no EOS id; with no suffix nothing stops it.
    _, free = tiny_btok("qwen2", seed=1, target_suffix="").generate_from_btoks(TEXTS, **kwargs)
    assert [len(x) for x in free] == [8] * 3
    model = tiny_btok("qwen2", seed=1)
    im_end, question_y = model.collator.suffix_ids, model.tokenizer.encode("?y", add_special_tokens=False)
    for suffix, eos in ((im_end, None), (question_y, None), ([], [60])):
        text = model.tokenizer.decode(suffix)
        model = tiny_btok("qwen2", seed=1, target_suffix=text)
        assert model.collator.suffix_ids == suffix
        texts, ids = model.generate_from_btoks(TEXTS, eos_token_id=eos, **kwargs)
        stop = suffix or eos
        want = [cut_at(f, stop) for f in free]
        assert ids == want, text
        assert len({len(w) for w in want}) > 1, "rows stop at different lengths"
        n = len(stop)
        assert texts == [
            model.tokenizer.decode(w[:-n] if w[-n:] == stop else w, skip_special_tokens=True) for w in want
        ]


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"inputs": "a text"}, ExampleError, "texts must be a list"),
        ({"inputs": [""]}, ExampleError, "text 0: empty text"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens must be an int >= 1, got 0"),
        ({"batch_size": 1.5}, ValueError, "batch_size must be an int >= 1, got 1.5"),
        ({"position_ids": torch.zeros(1)}, ValueError, r"sets \['position_ids'\] itself"),
        ({"num_beams": 2}, ValueError, "num_beams=2 is not supported"),
        ({"max_new_tokens": 300}, ExampleError, "text 0: the text .* longer than the model's limit"),
    ],
    ids=["str", "empty", "max_new_tokens", "batch_size", "own_kwarg", "beams", "too_long"],
)
def test_bad_arguments_name_them(kwargs, error, match):
    model = tiny_btok("llama")
    kwargs = {"inputs": ["a text"], **kwargs}
    with pytest.raises(error, match=match):
        model.generate_from_btoks(kwargs.pop("inputs"), **kwargs)


def test_an_empty_target_prefix_is_refused():
    model = tiny_btok("llama", target_prefix="")
    with pytest.raises(ValueError, match="needs a non-empty target_prefix"):
        model.generate_from_btoks(["a text"])


def test_an_image_for_a_text_model_is_refused():
    model = tiny_btok("llama")
    with pytest.raises(ExampleError, match="text 0: images and videos need a multimodal backbone"):
        model.generate_from_btoks([{"text": "a", "image": image(28, 28, 0)}])
