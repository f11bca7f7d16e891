"""The WordNet loader, its leak-free split, and the demo command end to end on a tiny model."""

import json
import os

import pytest
import torch

from btok_model.datasets import load_synsets, retrieval_split
from btok_model.datasets.wordnet import DEFAULT_WORDNET_DIR
from btok_model.embedder.pooled import PooledEmbedder
from btok_model.evaluation import METRIC_NAMES, EmbeddingScorer, TfidfTaskScorer, evaluate, load_task
from tests.helpers.wordnet_data import check_row_metrics, example_module, fake_wordnet


def test_parse(tmp_path):
    synsets = load_synsets(str(fake_wordnet(tmp_path)))
    assert len(synsets) == 63
    noun = synsets[1]
    assert noun.words == ("word1", "alias 1") and noun.definition == "the definition number 1"
    assert noun.examples == ("an example of word1",) and noun.pos == "noun" and noun.id == "noun:00001001"
    verb = next(s for s in synsets if s.pos == "verb")
    assert verb.words == ("run", "go") and verb.definition == "move fast by using the legs"
    assert verb.examples == ("run!", "go!")
    assert next(s for s in synsets if s.pos == "adj").words == ("galore",)


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"apt-get install wordnet-base.*wordnet_dir"):
        load_synsets(str(tmp_path))


def _assert_leak_free(split):
    held_out_words = set()
    for pool, synsets in ((split.test, split.test_synsets), (split.validation, split.validation_synsets)):
        words = {ex["positive"].lower() for ex in pool}
        assert len(words) == len(pool), "pool words must be unique"
        for ex, synset in zip(pool, synsets, strict=True):
            assert ex == {"query": synset.definition, "positive": synset.words[0]}
            # no lemma of a validation synset is a test word (a polysemous word in both pools)
            assert not {w.lower() for w in synset.words} & held_out_words, synset
        held_out_words |= words
    held_out_definitions = {ex["query"] for ex in split.test + split.validation}
    assert len(held_out_definitions) == len(split.test) + len(split.validation)
    for ex, synset in zip(split.train, split.train_synsets, strict=True):
        assert ex == {"query": synset.definition, "positive": synset.words[0]}
        assert not {w.lower() for w in synset.words} & held_out_words, synset
    assert not {ex["query"] for ex in split.train} & held_out_definitions
    train_words = [ex["positive"].lower() for ex in split.train]
    assert len(train_words) == len(set(train_words))


def test_split_is_leak_free(tmp_path):
    synsets = load_synsets(str(fake_wordnet(tmp_path)))
    split = retrieval_split(synsets, test_size=20, seed=3)
    assert len(split.test) == 20 and split.train
    _assert_leak_free(split)
    assert retrieval_split(synsets, test_size=20, seed=3) == split
    assert retrieval_split(synsets, test_size=20, seed=4) != split
    assert len(retrieval_split(synsets, test_size=20, train_size=5, seed=3).train) == 5
    with pytest.raises(ValueError, match="distinct"):
        retrieval_split(synsets, test_size=1000)


def test_validation_pool_is_held_out_and_leaves_the_test_pool_alone(tmp_path):
    synsets = load_synsets(str(fake_wordnet(tmp_path)))
    plain = retrieval_split(synsets, test_size=15, seed=3)
    split = retrieval_split(synsets, test_size=15, seed=3, validation_size=10)
    assert split.test == plain.test and len(split.validation) == 10
    assert not plain.validation
    _assert_leak_free(split)
    assert len(split.train) < len(plain.train)
    with pytest.raises(ValueError, match=r"distinct.*\(validation\)"):
        retrieval_split(synsets, test_size=15, validation_size=100)
    with pytest.raises(ValueError, match="validation_size"):
        retrieval_split(synsets, test_size=15, validation_size=-1)


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEFAULT_WORDNET_DIR, "data.noun")),
    reason="Debian's wordnet-base is not installed (the fake-folder tests cover the parser)",
)
def test_real_wordnet_split():
    synsets = load_synsets()
    assert len(synsets) > 100_000
    split = retrieval_split(synsets, test_size=300, train_size=2000, seed=0, validation_size=300)
    _assert_leak_free(split)
    assert len(split.train) == 2000 and len(split.validation) == 300


def test_demo_command_on_a_tiny_model(tmp_path, saved_backbone):
    """The demo end to end (data split, every row, the table) with a tiny random backbone."""
    out = tmp_path / "out"
    results = example_module("wordnet_demo").main(
        [
            "--out-dir",
            str(out),
            "--backbone",
            str(saved_backbone),
            "--wordnet-dir",
            str(fake_wordnet(tmp_path / "wn")),
            "--pool-size",
            "12",
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--lora-r",
            "2",
            "--eval-batch-size",
            "8",
        ]
    )
    assert list(results["rows"]) == [
        "tfidf-char",
        "tfidf-word",
        "last-token",
        "mean",
        "last-token-trained",
        "btok-contrastive",
        "btok-generative",
    ]
    rows, task = results["rows"], load_task(out / "test.jsonl")
    for name, row in rows.items():
        check_row_metrics(name, row, 12)
    # the rows that train nothing are exactly their scorer's metrics on the pool
    wanted = {
        "tfidf-char": evaluate(task, TfidfTaskScorer("char_wb", (3, 5))),
        "tfidf-word": evaluate(task, TfidfTaskScorer("word", (1, 1))),
    }
    autocast = torch.autocast(
        "cuda" if torch.cuda.is_available() else "cpu", torch.bfloat16, enabled=results["recipe"]["bf16"]
    )
    for row, pooling in (("last-token", "last"), ("mean", "mean")):  # the demo's row names, the poolings
        model = PooledEmbedder.from_backbone(
            str(saved_backbone), pooling=pooling, dtype=getattr(torch, results["data"]["dtype"])
        )
        with autocast:
            wanted[row] = evaluate(task, EmbeddingScorer(model.eval(), batch_size=8))
    for name, want in wanted.items():
        got = {m: rows[name]["metrics"][m] for m in METRIC_NAMES}
        assert got == pytest.approx({m: want[m] for m in METRIC_NAMES}, abs=1e-6), name
    logs = [e for e in results["rows"]["btok-generative"]["log_history"] if "loss" in e]
    assert len(logs) == 2 and all("generative_loss" in e for e in logs)
    assert all("generative_loss" not in e for e in results["rows"]["btok-contrastive"]["log_history"])
    assert json.loads((out / "results.json").read_text())["pool_size"] == 12
    table = (out / "results.md").read_text()
    assert "| BToks + generative condensation loss |" in table and "Machine:" in table
    decoded = results["rows"]["btok-generative"]["decoded"]  # 8 by default, beside their definitions
    task = load_task(out / "test.jsonl")
    assert [(d["definition"], d["word"]) for d in decoded] == [
        (task.queries[i], task.candidates[int(task.positive_index[i])]) for i in range(8)
    ]
    assert all(isinstance(d["decoded"], str) for d in decoded) and "| definition | word | decoded |" in table
    assert len((out / "train.jsonl").read_text().splitlines()) == 8  # steps x batch size
