"""The MTEB wrapper: an MTEB retrieval task built from local files (no download) run on a tiny
random BTok model gives btok's own evaluation's scores; instructions by role and task."""

import json
from pathlib import Path

import mteb  # the [mteb] extra (in the test extra)
import pytest
import torch
from datasets import Dataset  # mteb's dependency
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.types import PromptType

from btok_model.evaluation import evaluate, load_task
from btok_model.evaluation.scorers import EmbeddingScorer
from btok_model.mteb_encoder import DEFAULT_INSTRUCTIONS, MTEBEncoder
from tests.helpers.tiny import tiny_btok

PAIRS = [
    {"query": "a small furry pet", "positive": "cat"},
    {"query": "it barks", "positive": "dog"},
    {"query": "frozen water", "positive": "ice"},
    {"query": "a yellow fruit", "positive": "banana"},
    {"query": "it swims", "positive": "fish"},
    {"query": "falls in winter", "positive": "snow"},
]
CORPUS = ["apple", "stone", "tree", "river", "cloud", "bread", "glass", "sand", "wolf", "moon", "salt", "rain"]


def _metadata(name: str, task_type: str = "Retrieval", prompt=None) -> TaskMetadata:
    return TaskMetadata(
        name=name,
        type=task_type,
        description="definition to word retrieval from local JSONL files",
        reference=None,
        dataset={"path": "local/none", "revision": "1"},
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        date=None,
        domains=None,
        task_subtypes=None,
        license=None,
        annotations_creators=None,
        dialect=None,
        sample_creation=None,
        bibtex_citation="",
        prompt=prompt,
    )


class LocalPairs(AbsTaskRetrieval):
    """A retrieval task read from a btok pairs file and a corpus file (``self.files``)."""

    metadata = _metadata("BTokLocalPairs")
    files: tuple = ()

    def load_data(self, num_proc=None, **kwargs):
        pairs_path, corpus_path = self.files
        pairs = [json.loads(line) for line in Path(pairs_path).read_text().splitlines()]
        corpus = [json.loads(line)["text"] for line in Path(corpus_path).read_text().splitlines()]
        texts = list(dict.fromkeys([p["positive"] for p in pairs] + corpus))
        doc_id = {t: f"d{i}" for i, t in enumerate(texts)}
        split = RetrievalSplitData(
            queries=Dataset.from_list([{"id": f"q{i}", "text": p["query"]} for i, p in enumerate(pairs)]),
            corpus=Dataset.from_list([{"id": doc_id[t], "text": t} for t in texts]),
            relevant_docs={f"q{i}": {doc_id[p["positive"]]: 1} for i, p in enumerate(pairs)},
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


def _files(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    return str(pairs), str(corpus)


@pytest.mark.parametrize("instructed", [True, False], ids=["default-instructions", "raw-texts"])
def test_local_retrieval_task_equals_btok_evaluation(tmp_path, instructed):
    model = tiny_btok()
    files = _files(tmp_path)
    task = LocalPairs()
    task.files = files
    kwargs = {} if instructed else {"instructions": {}, "task_prompts": False}
    encoder = MTEBEncoder(model, name="btok/tiny", batch_size=4, **kwargs)
    result = mteb.evaluate(encoder, task, cache=None, show_progress_bar=False, encode_kwargs={"batch_size": 3})
    scores = result.task_results[0].scores["test"][0]
    # btok's evaluation of the same data; queries carry the instruction the wrapper documents
    own = load_task(*files)
    if instructed:
        own.queries = [f"Given a query, retrieve relevant passages that answer it: {q}" for q in own.queries]
    ours = evaluate(own, EmbeddingScorer(model, batch_size=4))
    assert scores["ndcg_at_10"] == pytest.approx(ours["ndcg@10"], abs=1e-5)
    assert scores["recall_at_1"] == pytest.approx(ours["recall@1"], abs=1e-5)
    assert scores["recall_at_10"] == pytest.approx(ours["recall@10"], abs=1e-5)
    assert scores["mrr_at_10"] == pytest.approx(ours["mrr@10"], abs=1e-5)
    assert 0 < ours["ndcg@10"] < 1  # neither trivial nor empty


class Recorder:
    """An embedder that records what it is asked to embed."""

    hidden_size = 2

    def __init__(self):
        self.seen = []

    def encode(self, inputs, batch_size=32, show_progress_bar=False):
        self.seen.append((list(inputs), batch_size))
        return torch.nn.functional.normalize(torch.ones(len(inputs), 2), dim=-1)


def _encode(encoder, metadata, prompt_type, texts, **kwargs):
    batches = [{"text": texts[:2]}, {"text": texts[2:]}]
    out = encoder.encode(
        batches, task_metadata=metadata, hf_split="test", hf_subset="default", prompt_type=prompt_type, **kwargs
    )
    assert out.shape == (len(texts), 2) and out.dtype.name == "float32"
    return encoder.model.seen[-1]


def test_instructions_by_role_task_and_type():
    model = Recorder()
    table = {**DEFAULT_INSTRUCTIONS, "Special": "Find its twin.", "STS": {"query": "Compare"}}  # replaces the default
    encoder = MTEBEncoder(model, instructions=table)
    retrieval, sts = _metadata("SomeRetrieval"), _metadata("SomeSTS", "STS")
    texts = ["one", "two", "three"]
    q, _ = _encode(encoder, retrieval, PromptType.query, texts, batch_size=7)
    assert q == [f"Given a query, retrieve relevant passages that answer it: {t}" for t in texts]
    assert _encode(encoder, retrieval, PromptType.document, texts)[0] == texts  # documents: none
    assert _encode(encoder, _metadata("Special"), PromptType.query, texts)[0][0] == "Find its twin: one"
    assert _encode(encoder, sts, None, texts)[0][0] == "Compare: one"  # no role: the query entry
    own = _metadata("Own", prompt={"query": "Retrieve the claim's evidence", "document": "A passage"})
    assert _encode(encoder, own, PromptType.document, texts)[0][0] == "A passage: one"  # the task's own prompt
    plain = MTEBEncoder(Recorder(), instructions={}, task_prompts=False, batch_size=5)
    assert _encode(plain, own, PromptType.query, texts, batch_size=7) == (texts, 5)
    assert plain.mteb_model_meta.similarity_fn_name.value == "cosine"


def test_bad_settings_and_inputs():
    with pytest.raises(ValueError, match="template"):
        MTEBEncoder(Recorder(), template="{text}")
    with pytest.raises(ValueError, match="instructions\\['STS'\\]"):
        MTEBEncoder(Recorder(), instructions={"STS": {"passage": "x"}})
    with pytest.raises(ValueError, match="video"):
        MTEBEncoder(Recorder()).encode(
            [{"video": [object()]}], task_metadata=_metadata("V"), hf_split="t", hf_subset="d", prompt_type=None
        )


def test_the_old_module_name_still_imports_with_a_deprecation_warning(monkeypatch):
    """``btok_model.mteb`` (named as the mteb package, which tracebacks then confuse) moved to
    ``btok_model.mteb_encoder``; the old import path gives the same objects and says so."""
    import importlib
    import sys

    import btok_model.mteb_encoder as moved

    monkeypatch.delitem(sys.modules, "btok_model.mteb", raising=False)
    with pytest.warns(DeprecationWarning, match="btok_model.mteb is deprecated: import from btok_model.mteb_encoder"):
        old = importlib.import_module("btok_model.mteb")
    assert old.MTEBEncoder is moved.MTEBEncoder and old.DEFAULT_INSTRUCTIONS is moved.DEFAULT_INSTRUCTIONS
    assert set(old.__all__) == set(moved.__all__) and all(hasattr(old, name) for name in moved.__all__)
