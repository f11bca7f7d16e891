"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL inputs: collation with images and video (Qwen3-VL's
timestamped video prompt equal to transformers' Qwen3VLProcessor's), the model's own M-RoPE
positions, encode() (packed == padded == the training pass), and errors naming the example."""

import json
import pickle
import warnings

import pytest
import torch
from transformers import Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin

from btok_model import BTokModel, ExampleError
from btok_model.embedder.multimodal import qwen3_vl_video_layout
from btok_model.training.mixed_dataset import load_examples
from tests.helpers.numerics import rel_err
from tests.helpers.tiny import (
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    VISION_END,
    VISION_START,
    FrameVideoProcessor,
    char_tokenizer,
    frames,
    image,
    image_processor,
    processor,
    tiny_backbone,
    tiny_btok,
    tiny_vl_btok,
    vl_tokenizer,
)

TOL = 2e-5


def sequences(batch, key="input_ids"):
    cu = batch["btok_layout"].host_cu_seqlens
    return [batch[key][..., a:b] for a, b in zip(cu[:-1], cu[1:])]


@pytest.fixture(scope="module")
def model():
    return tiny_vl_btok("qwen2_vl")


def examples():
    """Images of 1..6 tokens, non-square grids, an image-only positive, a query with an image and
    a 4-frame video, text."""
    return [
        {
            "query": {"text": "what is this?", "image": image(56, 84, 1)},
            "positive": "a cat",
            "negatives": [{"text": "a dog", "image": image(28, 28, 2)}],
        },
        {"query": "plain text", "positive": {"image": image(84, 56, 3)}},
        {
            "query": {"text": "clip", "image": image(28, 56, 9), "video": frames(4, 28, 56, 5)},
            "positive": "moving",
            "target": "it moves",
        },
        {"query": {"image": image(40, 50, 7)}, "positive": {"text": "blue", "image": image(30, 60, 8)}},
    ]


def by_hand(model, value):
    """``(ids, [pixel_values], [image_grid_thw])`` of an input as the authors' processor gets it:
    the image block, then the video block, each ``<|vision_start|>`` + one placeholder per
    merged patch + ``<|vision_end|>``, then a newline, then the text and a newline."""
    value = value if isinstance(value, dict) else {"text": value}
    tok, ids, pixels, grids = model.tokenizer, [], [], []
    if value.get("image") is not None:
        out = image_processor()(images=[value["image"]], return_tensors="pt")
        ids += [VISION_START] + [IMAGE_TOKEN] * (int(out["image_grid_thw"].prod()) // 4) + [VISION_END]
        pixels, grids = [out["pixel_values"]], [out["image_grid_thw"]]
    if value.get("video") is not None:
        video = FrameVideoProcessor()(videos=[value["video"]])
        ids += [VISION_START] + [VIDEO_TOKEN] * (int(video["video_grid_thw"].prod()) // 4) + [VISION_END]
    text = tok(value.get("text") or "", add_special_tokens=False)["input_ids"]
    if not ids:
        return text, pixels, grids
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    return ids + newline + (text + newline if text else []), pixels, grids


def test_batch_layout_and_pixels(model):
    """Vision blocks on their own line before the text, one placeholder per merged patch,
    BToks after the input, the target after the BToks (a positive with an image generates its
    image block too, never scored), pixels in row order (an input's, then its target's)."""
    exs = examples()
    batch = model.collate(exs)
    tok, btoks = model.tokenizer, model.btok_token_ids
    prefix = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    suffix = tok("<|im_end|>", add_special_tokens=False)["input_ids"]
    vision = {VISION_START, VISION_END, IMAGE_TOKEN, VIDEO_TOKEN}

    # (input, its target's body: an input or an explicit text) in packed order
    inputs = [ex["query"] for ex in exs] + [ex["positive"] for ex in exs] + [exs[0]["negatives"][0]]
    bodies = {0: exs[0]["positive"], 1: exs[1]["positive"], 2: "it moves", 3: exs[3]["positive"]}
    got = [s[0].tolist() for s in sequences(batch)]
    labels = [s[0].tolist() for s in sequences(batch, "labels")]
    pixels, grids, scored = [], [], 0
    for s, value in enumerate(inputs):
        ids, px, grid = by_hand(model, value)
        pixels, grids = pixels + px, grids + grid
        target = []
        if s in bodies:
            body, px, grid = by_hand(model, bodies[s])
            pixels, grids = pixels + px, grids + grid
            target = prefix + body + suffix
            expected = [-100] * len(prefix) + [-100 if t in vision else t for t in body] + suffix
            assert labels[s] == [-100] * (len(ids) + len(btoks)) + expected, s
            scored += sum(t != -100 for t in expected)
        assert got[s] == ids + btoks + target, s
        assert batch["btok_layout"].host_btok_start[s] == len(ids)
    assert (
        scored == batch["num_target_tokens"] and batch["labels"][0, 1:][batch["labels"][0, 1:] >= 0].numel() == scored
    )
    assert torch.equal(batch["pixel_values"], torch.cat(pixels))
    assert torch.equal(batch["image_grid_thw"], torch.cat(grids))
    assert batch["image_grid_thw"].tolist()[0] == [1, 4, 6] and int((batch["input_ids"] == IMAGE_TOKEN).sum()) == sum(
        int(g.prod()) // 4 for g in grids
    )
    video = FrameVideoProcessor()(videos=[exs[2]["query"]["video"]])
    assert torch.equal(batch["pixel_values_videos"], video["pixel_values_videos"])
    assert torch.equal(batch["video_grid_thw"], video["video_grid_thw"])
    assert (batch["input_ids"][0, batch.btok_positions()] == torch.tensor(btoks)).all()
    assert batch["position_ids"].shape == (3, 1, batch["btok_layout"].total_tokens)


def test_vision_blocks_on_their_own_line(model):
    """The authors' own_line prompt: blocks, newline, the text with its ends stripped and its
    lines' trailing spaces dropped, one final newline; blocks and a newline without text."""
    photo, clip = image(28, 56, 1), frames(2, 28, 28, 2)
    tok, btoks = model.tokenizer, model.btok_token_ids
    image_block = [VISION_START, IMAGE_TOKEN, IMAGE_TOKEN, VISION_END]
    video_block = [VISION_START, VIDEO_TOKEN, VISION_END]
    inputs = [
        {"text": " \n what is this?  \nsecond line \n\n", "image": photo},
        {"image": photo, "video": clip},
        {"text": "a clip", "video": clip},
        " plain text stays as it is ",
    ]
    expected = [
        image_block + tok("\nwhat is this?\nsecond line\n")["input_ids"],
        image_block + video_block + tok("\n")["input_ids"],
        video_block + tok("\na clip\n")["input_ids"],
        tok(" plain text stays as it is ")["input_ids"],
    ]
    assert model.collator.tokenize(inputs) == [ids + btoks for ids in expected]


def test_inline_end_placement_and_preserved_ends(model):
    """``placement: inline_end`` puts the blocks after the text's last line and a space (the
    authors' video positive "Understand the content of the provided video: <|video_pad|>");
    ``trailing_newline: preserve`` adds no final newline and keeps the text as given; a
    text-only input ignores both; an unknown value is refused, naming the input."""
    photo, clip = image(28, 56, 1), frames(2, 28, 28, 2)
    tok, btoks = model.tokenizer, model.btok_token_ids
    image_block = [VISION_START, IMAGE_TOKEN, IMAGE_TOKEN, VISION_END]
    video_block = [VISION_START, VIDEO_TOKEN, VISION_END]
    inputs = [
        {"text": "the video: \n", "video": clip, "placement": "inline_end"},
        {"text": "the video:", "video": clip, "placement": "inline_end", "trailing_newline": "preserve"},
        {"video": clip, "placement": "inline_end"},
        {"text": "a query\nline two ", "image": photo, "trailing_newline": "preserve"},
        {"image": photo, "trailing_newline": "preserve"},
        {"text": "plain ", "placement": "inline_end", "trailing_newline": "preserve"},
    ]
    expected = [
        tok("the video: ")["input_ids"] + video_block + tok("\n")["input_ids"],
        tok("the video: ")["input_ids"] + video_block,
        video_block + tok("\n")["input_ids"],
        image_block + tok("\na query\nline two ")["input_ids"],
        image_block,
        tok("plain ")["input_ids"],
    ]
    assert model.collator.tokenize(inputs) == [ids + btoks for ids in expected]
    # the same prompt as a training example's positive, and as the target its query's BToks generate
    batch = model.collate([{"query": "find it", "positive": inputs[1]}])
    query, positive = (s[0].tolist() for s in sequences(batch))
    prefix = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    suffix = tok("<|im_end|>", add_special_tokens=False)["input_ids"]
    assert positive == expected[1] + btoks
    assert query == tok("find it")["input_ids"] + btoks + prefix + expected[1] + suffix
    bad_values = (({"placement": "end"}, "placement must be one of"), ({"trailing_newline": "strip"}, "trailing_new"))
    for bad, message in bad_values:
        with pytest.raises(ExampleError, match=rf"^text 0: {message}"):
            model.collator.tokenize([{"text": "x", "image": photo, **bad}])
        with pytest.raises(ExampleError, match=rf"^text 0: {message}"):
            model.collator.tokenize([{"text": "x", **bad}])


def test_an_image_only_input_as_a_target(model):
    """As the authors' trainer does it: a positive generating an image-only query still has a
    target, the query's vision block (seen, unscored), its newline and the end marker (scored);
    the query itself has none (target_side "query")."""
    photo = image(56, 84, 1)
    batch = model.collate([{"query": {"image": photo}, "positive": "a cat", "target_side": "query"}])
    layout = batch["btok_layout"]
    query, positive = sequences(batch), sequences(batch, "labels")
    assert layout.host_target_start[0] == layout.seqlens[0]
    t = layout.host_target_start[1]
    block, _, _ = by_hand(model, {"image": photo})  # <|vision_start|> 6 x <|image_pad|> <|vision_end|> \n
    prefix = model.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    suffix = model.tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
    assert query[1][0, t:].tolist() == prefix + block + suffix and len(block) == 9
    assert positive[1][0, t:].tolist() == [-100] * (len(prefix) + 8) + block[-1:] + suffix
    assert batch["num_target_tokens"] == 2 and batch["image_grid_thw"].shape[0] == 2


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_position_ids_are_the_models_own_per_sequence(family):
    """Every packed sequence's ``[input | BToks]`` positions equal the model's
    ``get_rope_index`` on that part alone, and its target's equal ``S`` + the model's rope
    index on the target alone, ``S`` the part's token count (the authors' continuation);
    the padded encode batch's rows too. Qwen2.5-VL's video positions use the seconds per patch;
    Qwen3-VL's rope index splits a video into its temporal patches, one block each."""
    model = tiny_vl_btok(family)
    inner = model.decoder
    exs = examples()
    exs[2]["query"]["fps"] = 1.0
    exs[0]["target_side"] = "both"  # a positive's target holding the query's image
    batch = model.collate(exs)
    layout = batch["btok_layout"]
    grids = {"image": iter(batch["image_grid_thw"]), "video": iter(batch["video_grid_thw"])}

    def rope(ids):  # the model's own function on one part, its grids next in row order
        types = (ids == IMAGE_TOKEN).long() + 2 * (ids == VIDEO_TOKEN).long()
        kwargs = {}
        if (types == 1).any():
            kwargs["image_grid_thw"] = next(grids["image"])[None]
        if (types == 2).any():
            kwargs["video_grid_thw"] = next(grids["video"])[None]
            if family == "qwen2_5_vl":
                kwargs["second_per_grid_ts"] = torch.tensor([2 / 1.0])  # temporal_patch_size / fps
        return inner.get_rope_index(ids, types, **kwargs)[0]

    gaps = []
    for s, (ids, pos) in enumerate(zip(sequences(batch), sequences(batch, "position_ids"))):
        t = layout.host_target_start[s]
        head = rope(ids[:, :t])
        assert torch.equal(pos[..., :t], head), s
        if t < ids.shape[1]:
            assert torch.equal(pos[..., t:], t + rope(ids[:, t:])), s
            gaps.append(t - int(head.max()) - 1)
        if int(((ids == IMAGE_TOKEN) | (ids == VIDEO_TOKEN)).sum()) > 1:  # a grid of several tokens: 3D
            assert not torch.equal(pos, torch.arange(ids.shape[1]).expand(3, 1, -1)), "positions must be 3D"
    # After a text input the target continues right after the last BTok; after an image it
    # starts at the token count, past the image's last M-RoPE position.
    assert 0 in gaps and max(gaps) > 0
    if family == "qwen2_5_vl":  # the video's temporal axis depends on fps
        exs[2]["query"]["fps"] = 4.0
        assert not torch.equal(model.collate(exs)["position_ids"], batch["position_ids"])

    # encode's padded batch: [3, B, S], each row the model's function on the row alone
    inputs = [exs[0]["query"], "some text", exs[2]["query"], exs[3]["query"]]
    seqs, media = model.collator.encode_for_embedding(inputs)
    padded = model.collator.pad_sequences(seqs, media)
    for r, seq in enumerate(seqs):
        ids = torch.tensor(seq)[None]
        types = (ids == IMAGE_TOKEN).long() + 2 * (ids == VIDEO_TOKEN).long()
        m = media[r]
        kwargs = {}
        if m is not None:
            kwargs = {
                key: getattr(m, key) for key in ("image_grid_thw", "video_grid_thw") if getattr(m, key) is not None
            }
            if family == "qwen2_5_vl" and m.second_per_grid_ts is not None:
                kwargs["second_per_grid_ts"] = m.second_per_grid_ts
        expected = inner.get_rope_index(ids, types, **kwargs)[0][:, 0]
        assert torch.equal(padded["position_ids"][:, r, : len(seq)], expected)


def own_line_prompt(value) -> str:
    """The prompt text of an input, as the authors place it (checked above): its vision blocks,
    a newline, the text and a newline; a text-only input as it is."""
    value = value if isinstance(value, dict) else {"text": value}
    blocks = ""
    if value.get("image") is not None:
        blocks += "<|vision_start|><|image_pad|><|vision_end|>"
    if value.get("video") is not None:
        blocks += "<|vision_start|><|video_pad|><|vision_end|>"
    if not blocks:
        return value["text"]
    return blocks + "\n" + (value["text"] + "\n" if value.get("text") else "")


# Frames already sampled, at 2 fps unless given: 2 patches; 3 patches at 1 fps; an odd count (the
# last patch repeats the last frame); a slow clip; an image beside a video; text.
QWEN3_INPUTS = [
    {"text": "what happens?", "video": frames(4, 28, 56, 1)},
    {"text": "a slow clip", "video": frames(6, 56, 28, 2), "fps": 1.0},
    {"image": image(56, 84, 3), "video": frames(3, 28, 28, 4), "fps": 3.0},
    {"video": frames(2, 28, 28, 5), "fps": 0.5},
    {"text": "plain", "image": image(28, 56, 6)},
    "text only",
]


def test_qwen3_vl_prompts_are_the_processors(monkeypatch):
    """Every input's ids, pixels and grids equal what transformers' own Qwen3VLProcessor makes
    of the same prompt text, frames (``do_sample_frames=False``) and frame times (frame ``i``
    at ``i / fps``): a video is one ``<t seconds><|vision_start|>...<|vision_end|>`` block per
    temporal patch inside its own block. The processor class wants torchvision's video
    processor, so its class check is bypassed to run it around the frame-built one."""
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
    parts = processor(family="qwen3_vl")
    hf = Qwen3VLProcessor(
        image_processor=parts.image_processor, tokenizer=vl_tokenizer("qwen3_vl"), video_processor=parts.video_processor
    )
    model = tiny_vl_btok("qwen3_vl")
    seqs, media = model.collator.encode_for_embedding(QWEN3_INPUTS)
    for i, (value, seq, m) in enumerate(zip(QWEN3_INPUTS, seqs, media)):
        value = value if isinstance(value, dict) else {"text": value}
        kwargs = {}
        if value.get("image") is not None:
            kwargs["images"] = [value["image"]]
        if value.get("video") is not None:
            n = len(value["video"])
            metadata = {"fps": value.get("fps", 2.0), "frames_indices": list(range(n)), "total_num_frames": n}
            kwargs.update(videos=[value["video"]], video_metadata=[metadata], do_sample_frames=False)
        expected = hf(text=[own_line_prompt(value)], return_tensors="pt", **kwargs)
        assert seq == expected["input_ids"][0].tolist() + model.btok_token_ids, i
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
            assert (key in expected) == (m is not None and getattr(m, key) is not None), (i, key)
            if key in expected:
                assert torch.equal(getattr(m, key), expected[key]), (i, key)
    # The times by hand: 3 frames at 3 fps -> patches (0 + 1/3) / 2 and 2/3 (the last frame twice),
    # after the image's block; the video's outer pair as the installed transformers writes it
    text = model.tokenizer.decode(seqs[2])
    outer = qwen3_vl_video_layout() == "wrapped"
    after_image = "<|vision_end|>" + "<|vision_start|>" * outer + "<0.2 seconds><|vision_start|>"
    assert after_image in text and "<|vision_end|><0.7 seconds><|vision_start|>" in text
    assert text.count("<|vision_start|>") == 3 + outer and text.count("<|video_pad|>") == 2
    assert text.count("<|vision_end|>") == 3 + outer and text.endswith(
        "<|vision_end|>" * (1 + outer) + "\n" + "".join(model.config.btok_tokens)
    )
    assert "<1.0 seconds>" in model.tokenizer.decode(seqs[3])  # frames 0 and 1 at 0.5 fps: 0 s and 2 s


def test_qwen3_vl_video_layout_is_the_installed_transformers():
    """The layout asked of the installed class: transformers 5.25 replaced the video's outer vision
    pair with its frames (as 4.57 did); 5.17 to 5.24 kept it."""
    import transformers
    from packaging.version import Version

    version = Version(transformers.__version__)
    assert qwen3_vl_video_layout() == ("frames" if version >= Version("5.25.0.dev0") else "wrapped"), version


def test_saved_model_records_its_video_layout_and_a_load_under_another_warns(tmp_path):
    model = tiny_vl_btok("qwen3_vl")
    model.save_pretrained(tmp_path)
    path = tmp_path / "btok_config.json"
    saved = json.loads(path.read_text())
    assert saved["video_layout"] == qwen3_vl_video_layout()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same layout: no warning
        assert BTokModel.from_pretrained(tmp_path).config.video_layout == qwen3_vl_video_layout()
    other = {"wrapped": "frames", "frames": "wrapped"}[saved["video_layout"]]
    path.write_text(json.dumps({**saved, "video_layout": other}))
    with pytest.warns(UserWarning, match=f"laid out '{other}'.*video embeddings differ"):
        loaded = BTokModel.from_pretrained(tmp_path)
    assert loaded.config.video_layout == qwen3_vl_video_layout()  # computes with the installed layout
    path.write_text(json.dumps({**saved, "video_layout": "sideways"}))
    with pytest.raises(ValueError, match="video_layout must be None, 'wrapped' or 'frames'"):
        BTokModel.from_pretrained(tmp_path)


def test_other_families_record_no_video_layout(tmp_path):
    tiny_vl_btok("qwen2_vl").save_pretrained(tmp_path)
    assert json.loads((tmp_path / "btok_config.json").read_text())["video_layout"] is None


def test_collator_is_picklable_and_model_free(model):
    """DataLoader workers pickle the collator: it holds the processor and the rope index, no model."""
    collator = pickle.loads(pickle.dumps(model.collator))
    assert not any(isinstance(v, torch.nn.Module) for v in vars(collator).values())
    a, b = collator(examples()), model.collate(examples())
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_training_pass_equals_encode_and_targets_change_no_embedding(family):
    """encode() (packed and padded: the model's rope index on padded rows) gives the training
    pass's embeddings, images and a video included; another target changes none of them."""
    model = tiny_vl_btok(family)
    exs = examples()
    embedded = model.embed_batch(model.collate(exs))
    query, candidates, generative = embedded.query_embeddings, embedded.candidate_embeddings, embedded.generative_loss
    assert generative is not None
    inputs = [ex["query"] for ex in exs]
    cands = [ex["positive"] for ex in exs] + [exs[0]["negatives"][0]]
    for packed in (True, False):
        assert rel_err(model.encode(inputs, batch_size=3, packed=packed), query.detach()) < TOL
        assert rel_err(model.encode(cands, batch_size=2, packed=packed), candidates.detach()) < TOL
    changed = [dict(ex, target="a completely different target text") for ex in exs]
    again = model.embed_batch(model.collate(changed))
    assert torch.equal(again.query_embeddings, query) and torch.equal(again.candidate_embeddings, candidates)
    assert not torch.allclose(again.generative_loss, generative)


def test_images_change_the_embedding(model):
    """The pixels and the image position reach the embedding (nothing is dropped on the way)."""
    a = model.encode([{"text": "x", "image": image(56, 84, 1)}, {"text": "x", "image": image(56, 84, 2)}, "x"])
    assert rel_err(a[0], a[1]) > 1e-3 and rel_err(a[0], a[2]) > 1e-3


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_dense_mask_peers_with_images(attn, family):
    """sdpa / eager with the dense condensation mask give the fused backend's results."""
    model = tiny_vl_btok(family)
    batch = model.collate(examples())
    ref = model.embed_batch(batch)
    model.backbone.set_attn_implementation(attn)
    got = model.embed_batch(batch)
    for field in ("query_embeddings", "candidate_embeddings", "generative_loss"):
        assert rel_err(getattr(got, field).detach(), getattr(ref, field).detach()) < TOL, field


def test_text_only_use_of_a_vl_model():
    model = tiny_vl_btok("qwen2_vl", video=False)
    texts = ["what is a cat?", "paris", "x"]
    batch = model.collate([{"query": "q one", "positive": "p", "target": "t"}, {"query": "q", "positive": "pp"}])
    lens = batch["btok_layout"].seqlens
    expected = torch.cat([torch.arange(n) for n in lens])
    assert torch.equal(batch["position_ids"], expected.expand(3, 1, -1))
    assert not any(key in batch for key in ("pixel_values", "pixel_values_videos"))
    out = model(**batch)
    assert torch.isfinite(out.loss)
    emb = model.encode(texts, packed=True)
    assert rel_err(model.encode(texts, packed=False), emb) < TOL


def test_flat_jsonl_keys_and_paths(model, tmp_path):
    """The training loader's ``query_image`` / ``positive_image`` paths collate like dict inputs."""
    image(56, 84, 1).save(tmp_path / "cat.png")
    image(40, 50, 3).save(tmp_path / "dog.png")
    lines = [
        {"query": "what is this?", "query_image": "cat.png", "positive": "a cat"},
        {"query": "plain", "positive_image": "dog.png"},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    loaded = load_examples(tmp_path / "train.jsonl")
    flat = model.collate(loaded)
    as_dicts = model.collate(
        [
            {"query": {"text": "what is this?", "image": image(56, 84, 1)}, "positive": "a cat"},
            {"query": "plain", "positive": {"image": image(40, 50, 3)}},
        ]
    )
    for key in ("input_ids", "position_ids", "labels", "pixel_values", "image_grid_thw"):
        assert torch.equal(flat[key], as_dicts[key]), key


def test_video_processor_stand_in_matches_the_image_processor():
    """Two identical frames make one temporal patch equal to the still image's (the image
    processor repeats a still image over the temporal axis); distinct frames differ."""
    still = image(56, 84, 1)
    video = FrameVideoProcessor()(videos=[[still, still]])
    img = image_processor()(images=[still], return_tensors="pt")
    assert torch.equal(video["pixel_values_videos"], img["pixel_values"])
    assert video["video_grid_thw"].tolist() == img["image_grid_thw"].tolist()
    moving = FrameVideoProcessor()(videos=[frames(4, 56, 84, 1)])
    assert moving["video_grid_thw"].tolist() == [[2, 4, 6]]


BAD = [
    (
        {"query": {"text": "q", "image": "missing.png"}, "positive": "p"},
        "example 0, field 'query': image file .* not exist",
    ),
    ({"query": "q", "positive": "p", "query_image": "unreadable.png"}, "example 0, field 'query': cannot read image"),
    ({"query": "q", "positive": "p", "target": {"text": "t", "image": "x.png"}}, "field 'target': .*text only"),
    ({"query": "q", "positive": "p", "target_image": "x.png"}, "field 'target_image': targets are text only"),
    ({"query": "q <|image_pad|>", "positive": "p"}, "field 'query': the text contains a vision token"),
    (
        {"query": {"text": "<|vision_end|>", "image": image(28, 28, 1)}, "positive": "p"},
        "field 'query': the text contains a vision token",
    ),
    ({"query": {"text": "q", "image": 3}, "positive": "p"}, "field 'query': an image must be a PIL.Image"),
    ({"query": {"text": "q", "video": []}, "positive": "p"}, "field 'query': the video has no frames"),
    ({"query": {"text": "q", "imgae": "x.png"}, "positive": "p"}, r"field 'query': unknown keys \['imgae'\]"),
    ({"query": {"text": "  ", "image": "x.png"}, "positive": "p"}, "field 'query': empty text"),
    ({"query": "q", "positive": "p", "negative_images": ["x.png"]}, "field 'negative_images': not a known field"),
    (
        {"query": {"text": "q", "image": "x.png"}, "query_image": "y.png", "positive": "p"},
        "example 0: field 'query_image' and field 'query' both give an image",
    ),
]


@pytest.mark.parametrize("example, message", BAD, ids=[m.split(":")[-1][:30] for _, m in BAD])
def test_bad_multimodal_examples_name_the_example(model, example, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unreadable.png").write_text("not an image")
    with pytest.raises(ExampleError, match=message):
        model.collate([example])


def test_missing_processors_and_text_only_models_say_so(tmp_path):
    with pytest.raises(ExampleError, match=r"text 0: images .* text-only"):
        tiny_btok().encode([{"text": "q", "image": image(28, 28, 1)}])
    with pytest.raises(ExampleError, match=r"example 0, field 'query_image': images .* text-only"):
        tiny_btok().collate([{"query": "q", "query_image": "a.png", "positive": "p"}])
    no_video = tiny_vl_btok("qwen2_vl", video=False)
    with pytest.raises(ExampleError, match="text 1: this BTok model has no video processor"):
        no_video.encode(["fine", {"video": frames(2, 28, 28, 1)}])
    with pytest.raises(
        ValueError, match=r"processor= is for Qwen2-VL, Qwen2\.5-VL, Qwen3-VL backbones; LlamaForCausalLM"
    ):
        BTokModel.from_backbone(tiny_backbone(), tokenizer=char_tokenizer(), processor=image_processor())
    bare = tiny_vl_btok("qwen2_vl", processor=None)
    with pytest.raises(
        ExampleError, match="text 0: this BTok model has no image processor; pass the model's processor"
    ):
        bare.encode([{"text": "q", "image": image(28, 28, 1)}])
    assert bare.encode(["text works"]).shape == (1, 64)
