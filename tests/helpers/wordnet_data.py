"""A WordNet-format folder for the WordNet reader and demo tests, the examples as modules, and
the check of a demo row's metrics."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


def _line(offset, pos, words, gloss):
    ids = " ".join(f"{w} 0" for w in words)
    return f"{offset:08d} 03 {pos} {len(words):02x} {ids} 000 | {gloss}  \n"


def fake_wordnet(directory: Path, n: int = 60) -> Path:
    """A WordNet-format folder: n noun synsets, a few polysemous words, an adjective marker."""
    directory.mkdir(parents=True, exist_ok=True)
    nouns = [HEADER, HEADER.replace("1 This", "2 Lic")]
    for i in range(n):
        words = [f"word{i}", f"alias_{i}"] if i % 3 else [f"word{i}"]
        if i % 10 == 5:
            words.append(f"word{i - 1}")  # shares a lemma with the previous synset
        nouns.append(_line(1000 + i, "n", words, f'the definition number {i}; "an example of word{i}"'))
    (directory / "data.noun").write_text("".join(nouns))
    (directory / "data.verb").write_text(_line(5, "v", ["run", "go"], 'move fast by using the legs; "run!"; "go!"'))
    (directory / "data.adj").write_text(_line(7, "s", ["galore(ip)"], "in great numbers"))
    (directory / "data.adv").write_text(_line(9, "r", ["very"], "to a high degree"))
    return directory


def example_module(name: str):
    """``examples/<name>.py`` imported as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_row_metrics(name: str, row: dict, num_queries: int) -> None:
    """A demo row's metrics are the means of its per-query metrics (what its paired comparisons
    read), and per query they agree with each other: recall@1 <= recall@5 <= recall@10, and the
    chance of rank 1 is at most the reciprocal rank."""
    metrics, per_query = row["metrics"], row["per_query"]
    assert metrics["num_queries"] == num_queries, name
    for metric, values in per_query.items():
        assert len(values) == num_queries, (name, metric)
        assert metrics[metric] == pytest.approx(sum(values) / num_queries, abs=1e-9), (name, metric)
    for r1, r5, r10, rr in zip(*(per_query[m] for m in ("recall@1", "recall@5", "recall@10", "mrr@10")), strict=True):
        assert r1 <= r5 <= r10 and r1 <= rr + 1e-12, (name, r1, r5, r10, rr)
