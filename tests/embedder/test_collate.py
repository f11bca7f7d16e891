"""Collation: the packed batch layout, target rules, and clear errors for bad input."""

import pickle

import pytest
import torch

from btok_model import ExampleError
from btok_model.embedder import LossWeights
from tests.helpers.tiny import EXAMPLES, tiny_btok

PREFIX, SUFFIX = "<|im_start|>assistant\n", "<|im_end|>"


@pytest.fixture(scope="module")
def model():
    return tiny_btok()


def ids(model, text, special=True):
    return model.tokenizer(text, add_special_tokens=special)["input_ids"]


def sequences(batch):
    cu = batch["btok_layout"].host_cu_seqlens
    return [batch["input_ids"][0, a:b].tolist() for a, b in zip(cu[:-1], cu[1:])]


def test_batch_layout(model):
    batch = model.collate(EXAMPLES)
    k, btoks = model.config.num_btoks, model.btok_token_ids
    expected_targets = [EXAMPLES[0]["positive"], EXAMPLES[1]["target"], None, EXAMPLES[3]["target"]]
    queries = [ids(model, ex["query"]) for ex in EXAMPLES]
    wrap = ids(model, PREFIX, False), ids(model, SUFFIX, False)
    targets = [wrap[0] + ids(model, t, False) + wrap[1] if t else [] for t in expected_targets]
    candidates = [ex["positive"] for ex in EXAMPLES] + ["a red fruit", "a tall tree", "warm"]
    expected = [q + btoks + t for q, t in zip(queries, targets)] + [ids(model, c) + btoks for c in candidates]
    assert sequences(batch) == expected

    layout = batch["btok_layout"]
    assert layout.host_btok_start == [len(q) for q in queries] + [len(ids(model, c)) for c in candidates]
    assert layout.host_target_start == [b + k for b in layout.host_btok_start]
    assert layout.device.type == "cpu"
    assert batch["position_ids"].shape == batch["input_ids"].shape == batch["labels"].shape == (1, layout.total_tokens)
    assert sequences({**batch, "input_ids": batch["position_ids"]}) == [list(range(len(s))) for s in expected]

    index = batch.btok_positions()
    assert index.shape == (11, k) and index.dtype == torch.long and batch.num_queries == 4
    assert (batch["input_ids"][0, index] == torch.tensor(btoks)).all()
    assert index[4, 0] == layout.host_cu_seqlens[4] + layout.host_btok_start[4]
    assert batch["positive_index"].tolist() == [0, 1, 2, 3]

    # Labels: exactly the target text + suffix tokens, unshifted.
    labels, scored = batch["labels"][0], []
    for s, t in enumerate(expected_targets):
        if t:
            start = layout.host_cu_seqlens[s] + layout.host_target_start[s] + len(ids(model, PREFIX, False))
            scored += range(start, layout.host_cu_seqlens[s + 1])
    assert (labels != -100).nonzero().flatten().tolist() == scored
    assert torch.equal(labels[scored], batch["input_ids"][0, scored])
    assert batch["num_target_tokens"] == len(scored)


def test_target_rules(model):
    def target_of(example):
        batch = model.collate([example])
        layout = batch["btok_layout"]
        seq = batch["input_ids"][0, layout.host_target_start[0] : layout.seqlens[0]].tolist()
        return model.tokenizer.decode(seq)

    assert target_of({"query": "q", "positive": "pos"}) == PREFIX + "pos" + SUFFIX
    assert target_of({"query": "q", "positive": "pos", "target": "tgt"}) == PREFIX + "tgt" + SUFFIX
    assert target_of({"query": "q", "positive": "pos", "target": None}) == ""
    assert target_of({"query": "q", "positive": "pos", "target": ""}) == ""


def targets_of(model, examples):
    """The decoded target of every packed sequence ("" where none), queries then candidates."""
    batch = model.collate(examples)
    layout = batch["btok_layout"]
    cu = layout.host_cu_seqlens
    return [
        model.tokenizer.decode(batch["input_ids"][0, cu[s] + layout.host_target_start[s] : cu[s + 1]].tolist())
        for s in range(len(cu) - 1)
    ]


def test_generation_sides(model):
    """positive: the query's BToks generate the positive; query: the positive's BToks generate
    the query; both; none. Negatives never get a target; "source" changes nothing."""
    ex = {"query": "q text", "positive": "pos", "negatives": ["neg"]}
    wrap = PREFIX + "{}" + SUFFIX
    expected = {
        "positive": [wrap.format("pos"), "", ""],
        "query": ["", wrap.format("q text"), ""],
        "both": [wrap.format("pos"), wrap.format("q text"), ""],
        "none": ["", "", ""],
    }
    for side, targets in expected.items():
        assert targets_of(model, [dict(ex, target_side=side)]) == targets, side
        assert targets_of(model, [dict(ex, target_side=side, source="wiki")]) == targets, side
    assert targets_of(model, [ex]) == expected["positive"]
    # "target" replaces the text the query's BToks generate, with "positive" and "both"
    assert targets_of(model, [dict(ex, target="tgt")])[0] == wrap.format("tgt")
    assert targets_of(model, [dict(ex, target_side="both", target="tgt")]) == [
        wrap.format("tgt"),
        wrap.format("q text"),
        "",
    ]
    assert targets_of(model, [dict(ex, target_side="query", target=None)]) == expected["query"]
    assert targets_of(model, [dict(ex, target_side="none", target="")]) == expected["none"]


def test_mixed_sides_pack_labels_on_every_target():
    """One batch mixing the sides: every target's text and end marker are scored where it sits,
    nothing else; num_target_tokens counts them all."""
    model = tiny_btok()
    examples = [
        {"query": "aa", "positive": "bbb", "target_side": "query"},
        {"query": "cccc", "positive": "d", "target_side": "both", "negatives": ["e"]},
        {"query": "ff", "positive": "gg", "target_side": "none"},
        {"query": "hhh", "positive": "ii", "target": "jjjjj"},
    ]
    batch = model.collate(examples)
    layout, k = batch["btok_layout"], model.config.num_btoks
    # sequence: its target's text (queries 0-3, positives 4-7, the negative 8)
    texts = {1: "d", 3: "jjjjj", 4: "aa", 5: "cccc"}
    prefix = len(ids(model, PREFIX, False))
    scored = []
    for s, text in texts.items():
        start = layout.host_cu_seqlens[s] + layout.host_target_start[s]
        assert layout.host_target_start[s] == layout.host_btok_start[s] + k
        scored += range(start + prefix, layout.host_cu_seqlens[s + 1])
        assert layout.host_cu_seqlens[s + 1] - start == prefix + len(text) + len(ids(model, SUFFIX, False))
    for s in set(range(9)) - set(texts):
        assert layout.host_target_start[s] == layout.seqlens[s], f"sequence {s} must have no target"
    labels = batch["labels"][0]
    assert (labels != -100).nonzero().flatten().tolist() == sorted(scored)
    assert torch.equal(labels[scored], batch["input_ids"][0, scored])
    assert batch["num_target_tokens"] == len(scored)
    positions = batch["position_ids"][0]
    for s in range(9):  # 0, 1, ... per sequence: a target starts at input + K
        a, b = layout.host_cu_seqlens[s], layout.host_cu_seqlens[s + 1]
        assert positions[a:b].tolist() == list(range(b - a))


def test_empty_prefix_leaves_the_first_target_token_unscored():
    """The first token must be predicted by a target row, never by a BTok that sees the query."""
    model = tiny_btok(target_prefix="", target_suffix="")
    batch = model.collate([{"query": "q", "positive": "p", "target": "abc"}])
    layout = batch["btok_layout"]
    t = layout.host_target_start[0]
    assert batch["labels"][0, t : layout.seqlens[0]].tolist() == [-100] + ids(model, "bc", False)
    assert batch["num_target_tokens"] == 2
    with pytest.raises(ExampleError, match="example 0, field 'target': the target has no tokens to score"):
        model.collate([{"query": "q", "positive": "p", "target": "a"}])


def test_generative_weight_zero_collates_no_targets():
    """No target anywhere: neither the queries' nor the positives' (target_side query / both)."""
    model = tiny_btok()
    examples = EXAMPLES + [{"query": "q", "positive": "p", "target_side": "query"}, {**GOOD, "target_side": "both"}]
    with_targets = model.collate(examples)
    unweighted = tiny_btok(generative_weight=0.0)
    for batch in (unweighted.collate(examples), model.collator(examples, with_targets=False)):
        layout = batch["btok_layout"]
        assert layout.host_target_start == layout.seqlens
        assert batch["num_target_tokens"] == 0 and (batch["labels"] == -100).all()
        assert layout.total_tokens < with_targets["btok_layout"].total_tokens
        embedded = model.embed_batch(batch)
        assert embedded.generative_loss is None and embedded.num_target_tokens == 0
    # A batch collated with targets: the weight, not the batch, decides.
    for out in (unweighted(**with_targets), model(with_targets, loss_weights=LossWeights(0.0))):
        assert out.generative_loss is None and torch.equal(out.loss, out.contrastive_loss)
    assert model(with_targets).generative_loss is not None


def test_collator_is_picklable_and_model_free(model):
    collator = pickle.loads(pickle.dumps(model.collator))
    assert not any(isinstance(v, torch.nn.Module) for v in vars(collator).values())
    a, b = collator(EXAMPLES), model.collate(EXAMPLES)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
    assert a["btok_layout"].host_cu_seqlens == b["btok_layout"].host_cu_seqlens


GOOD = {"query": "q", "positive": "p"}
BAD_EXAMPLES = [
    ([{"query": "", "positive": "p"}], "example 0, field 'query': empty text"),
    ([GOOD, {"query": "   ", "positive": "p"}], "example 1, field 'query': empty text"),
    ([GOOD, {"positive": "p", "target": "t"}], "example 1 has a target but no query"),
    ([{"positive": "p"}], "example 0 has no 'query'"),
    ([{"query": "q"}], "example 0 has no 'positive'"),
    ([{"query": "q", "positive": ""}], "example 0, field 'positive': empty text"),
    ([{"query": "q", "positive": "p", "label": 1}], r"example 0: unknown fields \['label'\]"),
    ([{"query": "q", "positive": "p", "query_image": "a.png"}], "example 0, field 'query_image': images .* text-only"),
    ([{"query": {"text": "q", "image": "a.png"}, "positive": "p"}], "example 0, field 'query': images .* text-only"),
    ([{"query": 3, "positive": "p"}], "example 0, field 'query': must be a str, got int"),
    ([{"query": "q", "positive": "p", "negatives": "n"}], "example 0, field 'negatives': must be a list"),
    ([{"query": "q", "positive": "p", "negatives": ["n", ""]}], r"example 0, field 'negatives\[1\]': empty text"),
    ([{"query": "q", "positive": "p", "target": 7}], "example 0, field 'target': a target must be a str or None"),
    ([{"query": "q", "positive": "p <|btok_1|>"}], "example 0, field 'positive': the text contains a BTok token"),
    ([{**GOOD, "target": "t <|btok_0|>"}], "example 0, field 'target': the text contains a BTok token"),
    ([GOOD, {**GOOD, "target_side": "pos"}], r"example 1, field 'target_side': must be one of \['positive', 'query'"),
    ([{**GOOD, "target_side": None}], "example 0, field 'target_side': must be one of .* got NoneType"),
    ([{**GOOD, "target_side": "query", "target": "t"}], "example 0, field 'target': .* target_side 'query' has the"),
    ([{**GOOD, "target_side": "none", "target": "t"}], "example 0, field 'target': .* target_side 'none' has the"),
    ([{**GOOD, "target_side": "both", "target": None}], "example 0, field 'target': is empty, but target_side 'both'"),
    ([{**GOOD, "source": 3}], "example 0, field 'source': must be a str naming the data source, got int"),
    ([GOOD, ["q", "p"]], "example 1 must be a dict"),
    ([], "examples must be a non-empty list"),
    (GOOD, "examples must be a non-empty list"),
]


@pytest.mark.parametrize("examples, message", BAD_EXAMPLES, ids=[m.split(":")[-1][:40] for _, m in BAD_EXAMPLES])
def test_bad_examples_name_the_example(model, examples, message):
    with pytest.raises(ExampleError, match=message):
        model.collate(examples)


def test_lengths_are_checked_never_truncated():
    model = tiny_btok(max_length=24)
    k, prefix_and_suffix = model.config.num_btoks, len(ids(model, PREFIX + SUFFIX, False))
    fits = "x" * (24 - k - prefix_and_suffix - 1)
    model.collate([{"query": "q", "positive": fits}])  # the positive is also the target
    cases = [
        ({"query": "q" * 21, "positive": "p", "target": None}, "example 0, field 'query': the query \\+ 4 BToks is 25"),
        (
            {"query": "q", "positive": "p", "target": "t" * 8},
            "example 0, field 'target': query \\+ 4 BToks \\+ target is 25",
        ),
        ({"query": "q", "positive": "p" * 21, "target": None}, "example 0, field 'positive': the candidate"),
        (
            {"query": "q" * 8, "positive": "p", "target_side": "query"},
            "example 0, field 'positive': positive \\+ 4 BToks \\+ target \\(the query\\) is 25",
        ),
        ({"query": "q", "positive": "p", "negatives": ["n", "n" * 30]}, r"example 0, field 'negatives\[1\]'"),
    ]
    for example, message in cases:
        with pytest.raises(ExampleError, match=message + ".*longer than max_length=24"):
            model.collate([example])
    with pytest.raises(ExampleError, match="text 1: the text \\+ K BToks is 25 tokens, longer than max_length=24"):
        model.encode(["ok", "e" * 21])

    model = tiny_btok()  # no max_length: the backbone's max_position_embeddings=256 still applies
    limit = r"text 0: .* 304 tokens, longer than the model's limit \(max_position_embeddings=256\)"
    with pytest.raises(ExampleError, match=limit):
        model.encode(["e" * 300])


@pytest.mark.parametrize(
    "texts, message",
    [
        ("one text", "texts must be a list of str"),
        (["fine", ""], "text 1: empty text"),
        (["fine", None], "text 1: must be a str"),
        ([{"text": "a", "image": "b.png"}], "text 0: images"),
    ],
)
def test_bad_texts_name_the_text(model, texts, message):
    with pytest.raises(ExampleError, match=message):
        model.encode(texts)
