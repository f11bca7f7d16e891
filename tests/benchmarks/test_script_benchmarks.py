"""The stand-alone benchmark scripts run at their smallest sizes and measure what they say
(their figures are in benchmarks/RESULTS.md; nothing here times anything)."""

import json

import pytest

from benchmarks import retrieval, train_data_workers


def test_train_data_workers_trains_with_a_worker(tmp_path, monkeypatch, one_torch_thread, capsys):
    monkeypatch.chdir(tmp_path)
    results = train_data_workers.main(
        [
            "--workers",
            "0",
            "1",
            "--steps",
            "4",
            "--warmup",
            "1",
            "--batch-size",
            "2",
            "--images",
            "8",
            "--size",
            "48",
            "40",
        ]
    )
    assert sorted(results) == [0, 1]
    for workers, kept in results.items():
        assert isinstance(kept, list) and len(kept) == 3, (workers, kept)  # 4 steps: 3 gaps, none left out
        assert all(t > 0 for t in kept)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("workers ")]
    assert [line.split(":")[0] for line in lines] == ["workers 0", "workers 1"]


def test_train_data_workers_refuses_too_few_steps(capsys):
    with pytest.raises(SystemExit) as stop:
        train_data_workers.main(["--steps", "2", "--warmup", "1"])
    assert stop.value.code == 2 and "--steps must exceed --warmup + 1" in capsys.readouterr().err


def test_retrieval_ann_part_finds_the_exact_neighbours(tmp_path):
    """The ANN part on 3,000 clustered 16-dim vectors: an index is built and searched, and its
    recall@10 against the exact search is measured (an index returning wrong rows scores near 0)."""
    out = tmp_path / "r.json"
    results = retrieval.main(
        ["--parts", "ann", "--ann", "synthetic", "--synthetic-rows", "3000", "--synthetic-dim", "16",
         "--synthetic-index-types", "IVF_HNSW_SQ", "--work-dir", str(tmp_path), "--output", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    (run,) = results["ann"]
    assert run["rows"] == 3000 and run["dim"] == 16 and run["queries"] == retrieval.QUERIES
    (entry,) = run["indexes"]
    searches = entry["searches"]
    assert [s["nprobes"] for s in searches] == [20, 20]  # sqrt(3000) / 4 partitions: a quarter is under 20
    assert all(0.5 <= s["recall_at_10"] <= 1.0 for s in searches), searches
