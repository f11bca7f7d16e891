"""The one backbone loader: classes by model type, GGUF files that train and save, BTok rows
from the EOS row, LoRA on the language model only, pixel limits, the shared collator."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, LlavaConfig, Qwen2Config

from btok_model import BTokModel
from btok_model.embedder.backbone import (
    backbone_class,
    check_saveable,
    load_backbone,
    set_pixel_limits,
    transformers_model,
)
from btok_model.embedder.multimodal import MultimodalCollator
from btok_model.embedder.pooled import PooledEmbedder
from btok_model.embedder.tokens import lora_target_modules
from btok_model.training.presets import AUTHORS_LORA_MODULES
from tests.helpers.tiny import (
    EXAMPLES,
    IMAGE_TOKEN,
    adamw_step,
    char_tokenizer,
    frames,
    image,
    image_processor,
    processor,
    tiny_backbone,
    tiny_vl_backbone,
    vl_tokenizer,
)

TEXTS = ["the cat sat", "a dog", "x"]


def test_backbone_class_by_model_type():
    assert backbone_class(Qwen2Config()) is AutoModelForCausalLM
    assert backbone_class(tiny_vl_backbone("qwen2_vl").config) is AutoModelForImageTextToText
    assert backbone_class(tiny_vl_backbone("qwen2_5_vl").config) is AutoModelForImageTextToText
    with pytest.raises(ValueError, match="'llava' is a vision-language model btok does not support"):
        backbone_class(LlavaConfig())


@pytest.fixture
def tiny_gguf(tmp_path):
    pytest.importorskip("gguf")
    from tests.helpers.tiny_gguf import write_tiny_gguf

    reference = write_tiny_gguf(tmp_path / "tiny.gguf")
    return tmp_path, "tiny.gguf", reference


def test_gguf_backbone_loads_dequantised_trains_saves_and_reloads(tiny_gguf, tmp_path):
    folder, name, reference = tiny_gguf
    loaded = load_backbone(folder, gguf_file=name, dtype=torch.float32, attn_implementation="sdpa")
    model = loaded.model
    # Plain float weights, equal to what the file's Q8_0 blocks decode to, and no quantization marks.
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    assert getattr(model.config, "quantization_config", None) is None
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    ids = torch.tensor([loaded.tokenizer("the cat<|im_end|>")["input_ids"]])
    assert ids[0, -1].item() == 2 and loaded.tokenizer.eos_token == "<|im_end|>"
    reference.set_attn_implementation("sdpa")
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)
    check_saveable(model, loaded.tokenizer, None, tmp_path / "check")
    assert not list((tmp_path / "check").iterdir()), "the check must leave nothing behind"

    btok = BTokModel.from_backbone(str(folder), gguf_file=name, dtype=torch.float32, lora=2)
    adamw_step(btok, EXAMPLES)
    btok.save_pretrained(tmp_path / "saved")
    again = BTokModel.from_pretrained(tmp_path / "saved")
    assert again.tokenizer("the cat")["input_ids"] == btok.tokenizer("the cat")["input_ids"]
    torch.testing.assert_close(again.encode(TEXTS), btok.encode(TEXTS), rtol=1e-5, atol=1e-6)

    # Without the loader's dequantized load, transformers marks the model quantized and refuses to save it.
    marked = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    assert marked.hf_quantizer is not None
    with pytest.raises(ValueError, match=r"quantized .* transformers cannot save"):
        check_saveable(marked, loaded.tokenizer, None, tmp_path / "check")


def char_tokenizer_with_eos():
    tokenizer = char_tokenizer()
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def test_btok_rows_from_the_eos_row():
    eos = char_tokenizer_with_eos().eos_token_id
    for family in ("llama", "qwen2"):  # tied and untied LM heads
        backbone = tiny_backbone(family, vocab_size=None)
        embed = backbone.get_input_embeddings().weight.detach().clone()
        head = backbone.get_output_embeddings().weight.detach().clone()
        model = BTokModel.from_backbone(backbone, tokenizer=char_tokenizer_with_eos(), btok_init="eos", lora=None)
        ids = model.btok_token_ids
        weight = transformers_model(model.backbone).get_input_embeddings().weight
        assert torch.equal(weight[ids], embed[eos].expand(4, -1)) and torch.equal(weight[: len(embed)], embed)
        if family == "qwen2":  # an untied head's BTok rows: the mean of its rows
            out = transformers_model(model.backbone).get_output_embeddings().weight
            torch.testing.assert_close(out[ids], head.mean(0).expand(4, -1), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="btok_init must be one of"):
        BTokModel.from_backbone(tiny_backbone(), tokenizer=char_tokenizer(), btok_init="zero")
    with pytest.raises(ValueError, match="needs the tokenizer's EOS token"):
        BTokModel.from_backbone(tiny_backbone(), tokenizer=char_tokenizer(), btok_init="eos")


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_lora_targets_stay_on_the_language_model(family):
    import re

    model = tiny_vl_backbone(family)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    regex = lora_target_modules(model, AUTHORS_LORA_MODULES)
    hit = {n for n in names if re.fullmatch(regex, n)}
    assert hit and all(".language_model.layers." in n for n in hit)
    assert {n.rsplit(".", 1)[-1] for n in hit} == {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"}
    assert len(hit) == 2 * 5
    # The authors' list applied to every module (PEFT's list matching) reaches Qwen2.5-VL's vision tower.
    vision_down = [n for n in names if n.endswith("down_proj") and ".visual." in n]
    assert bool(vision_down) == (family == "qwen2_5_vl")
    one_layer = {n for n in names if re.fullmatch(lora_target_modules(model, "all-linear", [1]), n)}
    assert one_layer and all(".language_model.layers.1." in n for n in one_layer)
    with pytest.raises(ValueError, match="match no linear layer of the language model"):
        lora_target_modules(model, ["qkv"])
    with pytest.raises(ValueError, match="LoRA layers must be indices"):
        lora_target_modules(model, "all-linear", [2])


def test_pixel_limits():
    parts = processor(video=False)
    set_pixel_limits(parts, image=(28 * 28 * 4, 28 * 28 * 9))
    grid = parts.image_processor(images=[image(28, 28, 0)], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 4]]  # a 28 x 28 image grows to the 3136-pixel minimum: 56 x 56
    grid = parts.image_processor(images=[image(280, 280, 0)], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 6, 6]]  # and a 280 x 280 one shrinks to the 7056-pixel maximum: 84 x 84
    set_pixel_limits(parts, video=(3136, None))  # no video processor: no video is ever processed
    with pytest.raises(ValueError, match="video pixel limits given, but the model's video processor"):
        set_pixel_limits(processor(video=True), video=(3136, None))  # the test's frame-built processor has none
    with pytest.raises(ValueError, match="0 < min <= max"):
        set_pixel_limits(parts, image=(5000, 4000))


def test_pooled_baseline_on_a_vision_language_backbone():
    """The no-BTok baseline gets the BTok model's collator (K = 0) and its images; its packed
    pass equals transformers' own forward (its own rope index) on the same tokens."""
    backbone = tiny_vl_backbone("qwen2_vl", seed=2)
    model = PooledEmbedder.from_backbone(backbone, vl_tokenizer(), processor=processor(video=False))
    assert isinstance(model.collator, MultimodalCollator) and model.collator.num_btoks == 0
    inputs = [{"text": "a red cat", "image": image(56, 84, 3)}, "a dog", {"image": image(28, 56, 4)}]
    emb = model.encode(inputs, batch_size=3)
    ids, media = model.collator.encode_for_embedding(inputs)
    reference = tiny_vl_backbone("qwen2_vl", seed=2)
    reference.set_attn_implementation("eager")
    with torch.no_grad():
        for i, (seq, m) in enumerate(zip(ids, media)):
            seq = torch.tensor([seq])
            pixels = {} if m is None else {"pixel_values": m.pixel_values, "image_grid_thw": m.image_grid_thw}
            types = (seq == IMAGE_TOKEN).long()  # what the processor returns beside the ids
            hidden = reference.model(input_ids=seq, mm_token_type_ids=types, **pixels).last_hidden_state[0, -1]
            torch.testing.assert_close(emb[i], torch.nn.functional.normalize(hidden, dim=-1), rtol=1e-5, atol=1e-6)
    batch = model.collate([{"query": inputs[0], "positive": "p"}, {"query": "q", "positive": inputs[2]}])
    with torch.no_grad():
        embedded = model.embed_batch(batch)
    torch.testing.assert_close(embedded.query_embeddings[0], emb[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embedded.candidate_embeddings[1], emb[2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no video processor"):
        model.encode([{"video": frames(2, 28, 28, 1)}])


def test_loaded_backbone_carries_its_tokenizer(tmp_path):
    """A vision-language folder with a custom tokenizer: the tokenizer comes back as the class it
    was saved as, the image processor from the folder."""
    tiny_vl_backbone("qwen2_vl").save_pretrained(tmp_path)
    vl_tokenizer().save_pretrained(tmp_path)
    image_processor().save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path), dtype=torch.float32)
    assert loaded.tokenizer("a cat")["input_ids"] == vl_tokenizer()("a cat")["input_ids"]
    assert loaded.processor is not None and loaded.no_video_reason
    assert loaded.processor.size["longest_edge"] == image_processor().size["longest_edge"]
    with pytest.raises(ValueError, match="apply only when loading by name"):
        load_backbone(tiny_backbone(), char_tokenizer(), dtype=torch.float32)
