"""``btok_init="checkpoint"``: the BToks keep the rows the backbone already has for their ids (the
authors' start on Qwen2-VL-2B, whose embedding matrix has spare rows), the ids the authors'
injector gives, and an error naming the sizes when the ids do not fit."""

import pytest
import torch
from safetensors.torch import load_file

from btok_model import BTokModel
from btok_model.embedder.backbone import transformers_model
from btok_model.train import parser, recipe_from_args
from btok_model.training.recipe import build_model
from tests.helpers.tiny import char_tokenizer, tiny_backbone, vl_tokenizer
from tests.helpers.training import vl_folder


def _authors_ids(tokenizer, k: int) -> list[int]:
    """What vlm2emb's ``BToksTokenInjector.on_processor`` does to a tokenizer: add the missing
    ``<|btok_i|>`` as special tokens, then read their ids."""
    names = [f"<|btok_{i}|>" for i in range(k)]
    missing = [t for t in names if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return tokenizer.convert_tokens_to_ids(names)


def _stored(folder, suffix: str) -> torch.Tensor:
    state = load_file(folder / "model.safetensors")
    (key,) = [k for k in state if k.endswith(suffix)]
    return state[key]


def test_preset_keeps_the_checkpoint_rows_of_a_backbone_with_spare_rows(tmp_path):
    folder = vl_folder(tmp_path, "qwen2_vl")  # 64 embedding rows (tied head) for a 52-id tokenizer
    stored = _stored(folder, "embed_tokens.weight")
    assert stored.shape[0] == 64 and len(vl_tokenizer()) == 52
    args = parser().parse_args(
        ["--preset", "btoks-qwen2vl-2b-v1", "--model", str(folder), "--train-data", "d", "--output-dir", "o"]
    )
    recipe = recipe_from_args(args)
    assert recipe.embedder.btok_init == "checkpoint"
    model = build_model(str(folder), recipe, dtype=torch.float32, attn_implementation="sdpa")

    ids = model.btok_token_ids
    assert ids == _authors_ids(vl_tokenizer(), 4) == [52, 53, 54, 55]
    inner = transformers_model(model.backbone)
    rows = inner.get_input_embeddings()(torch.tensor(ids))  # through PEFT's trainable-token wrapper
    assert torch.equal(rows, stored[ids]), "the BTok rows before training are the stored rows, bit for bit"
    assert not torch.equal(stored[ids[0]], stored[ids[1]])
    # The tied LM head scores the BTok ids with the same stored rows.
    hidden = torch.randn(3, stored.shape[1])
    logits = inner.get_output_embeddings()(hidden)
    assert torch.equal(logits, torch.nn.functional.linear(hidden, stored))
    # Every other row is untouched too.
    assert torch.equal(inner.get_input_embeddings()(torch.arange(64)), stored)


def test_checkpoint_rows_of_an_untied_head_are_kept():
    backbone = tiny_backbone("qwen2")  # untied head, 64 rows for 48 ids
    embed = backbone.get_input_embeddings().weight.detach().clone()
    head = backbone.get_output_embeddings().weight.detach().clone()
    model = BTokModel.from_backbone(backbone, tokenizer=char_tokenizer(), btok_init="checkpoint", lora=None)
    assert model.btok_token_ids == _authors_ids(char_tokenizer(), 4) == [48, 49, 50, 51]
    inner = transformers_model(model.backbone)
    assert torch.equal(inner.get_input_embeddings().weight, embed)
    assert torch.equal(inner.get_output_embeddings().weight, head)


def test_checkpoint_init_names_the_sizes_when_the_ids_do_not_fit():
    backbone = tiny_backbone("llama", vocab_size=None)  # exactly the tokenizer's 48 rows
    with pytest.raises(ValueError, match=r"ids 48\.\.51, but its input embedding has 48 rows .* need 52.*'eos'"):
        BTokModel.from_backbone(backbone, tokenizer=char_tokenizer(), btok_init="checkpoint")
    assert backbone.get_input_embeddings().weight.shape[0] == 48, "nothing resized"


def test_ids_follow_a_tokenizer_that_already_has_the_btoks():
    tokenizer = char_tokenizer()
    tokenizer.add_tokens(["<|btok_0|>", "<|btok_1|>", "<|btok_2|>", "<|btok_3|>"], special_tokens=True)
    model = BTokModel.from_backbone(tiny_backbone(), tokenizer=tokenizer, btok_init="checkpoint")
    assert model.btok_token_ids == _authors_ids(tokenizer, 4) == [48, 49, 50, 51]
