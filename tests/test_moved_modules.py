"""Modules renamed to say what they hold: each old import path still gives the same objects, with
a DeprecationWarning naming the new module (``btok_model.mteb``'s test is in
tests/evaluation/test_mteb.py)."""

import importlib
import sys

import pytest

MOVED = [
    ("btok_model.embedder.core", "btok_model.embedder.base", "Embedder"),
    ("btok_model.embedder.modeling", "btok_model.embedder.btok", "BTokModel"),
    ("btok_model.training.batch_builder", "btok_model.training.collator", "TrainingCollator"),
    ("btok_model.evaluation.runner", "btok_model.evaluation.scorers", "evaluate"),
    ("btok_model.st", "btok_model.sentence_transformers_module", "BTokEmbedding"),
]


@pytest.mark.parametrize("old_name, new_name, name", MOVED, ids=[old for old, _, _ in MOVED])
def test_the_old_module_path_warns_and_gives_the_same_objects(monkeypatch, old_name, new_name, name):
    if new_name.endswith("sentence_transformers_module"):
        pytest.importorskip("sentence_transformers")
    new = importlib.import_module(new_name)
    monkeypatch.delitem(sys.modules, old_name, raising=False)
    with pytest.warns(DeprecationWarning, match=rf"^{old_name} is deprecated: import from {new_name} \(.*{name}"):
        old = importlib.import_module(old_name)
    assert getattr(old, name) is getattr(new, name)
    assert list(old.__all__) == list(new.__all__) and all(getattr(old, n) is getattr(new, n) for n in new.__all__)
