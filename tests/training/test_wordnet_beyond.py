"""The WordNet demo's rows beyond the paper (MaxSim, Matryoshka, mined negatives) end to end
on a tiny random backbone, and the aggregation of several seeds' results."""

import json
import math

import pytest

from tests.helpers.tiny import save_backbone
from tests.helpers.wordnet_data import check_row_metrics, example_module, fake_wordnet


def test_beyond_rows_on_a_tiny_model(tmp_path):
    backbone_dir = save_backbone(tmp_path / "tiny", hidden_size=160)  # H > 128: the 128-dim rows
    demo = example_module("wordnet_demo")
    argv = ["--out-dir", str(tmp_path / "out"), "--backbone", str(backbone_dir), "--wordnet-dir"]
    argv += [str(fake_wordnet(tmp_path / "wn")), "--pool-size", "12", "--max-steps", "1", "--batch-size", "4"]
    argv += ["--lora-r", "2", "--eval-batch-size", "8", "--decode", "0", "--seed", "3", "--rows", "beyond"]
    results = demo.main(argv)
    assert list(results["rows"]) == ["btok-generative", *demo.BEYOND_ROWS]
    assert results["seed"] == 3 and results["recipe"]["seed"] == 3
    rows = results["rows"]
    for name, row in rows.items():
        check_row_metrics(name, row, 12)
    # Trained once per model: the truncated and MaxSim-scored rows reuse btok-generative's.
    trained = [n for n, r in rows.items() if r["train_seconds"] is not None]
    assert trained == ["btok-generative", "btok-maxsim", "btok-matryoshka", "btok-mined"]
    assert rows["btok-maxsim-scored"]["similarity"] == "maxsim" and rows["btok-generative"]["similarity"] == "cosine"
    assert [rows[n]["dims"] for n in ("btok-matryoshka-64", "btok-matryoshka-128", "btok-matryoshka")] == [
        64,
        128,
        None,
    ]
    assert rows["btok-mined"]["mine_seconds"] > 0
    mining = results["mining"]
    assert mining["num_negatives"] == 4 and 0 < mining["mean_negatives"] <= 4 and mining["pool"] >= 4
    pairs = {(c["a"], c["b"]) for c in results["comparisons"]}
    assert {(name, "btok-generative") for name in demo.BEYOND_ROWS} <= pairs
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| BToks + generative, trained and scored by MaxSim |" in table and "Mined negatives: 4 per" in table
    assert "Seed: 3" in table


def test_seed_aggregation(tmp_path):
    seeds = example_module("wordnet_seeds")
    paths = []
    for seed, (r1, diff) in enumerate([(0.2, 0.05), (0.4, 0.15), (0.3, 0.10)]):
        result = {
            "seed": seed,
            "command": f"python examples/wordnet_demo.py --seed {seed}",
            "rows": {"btok-generative": {"metrics": {"recall@1": r1, "mrr@10": r1 + 0.1}}},
            "comparisons": [
                {
                    "a": "btok-maxsim",
                    "b": "btok-generative",
                    "recall@1": {"difference": diff, "low": diff - 0.1, "high": diff + 0.1},
                    "mrr@10": {"difference": -diff, "low": -diff - 0.1, "high": -diff + 0.1},
                }
            ],
        }
        path = tmp_path / f"{seed}.json"
        path.write_text(json.dumps(result))
        paths.append(str(path))
    summary = seeds.main([*paths, "--output", str(tmp_path / "seeds.md")])
    row = summary["rows"]["btok-generative"]["recall@1"]
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.3) and (row["min"], row["max"]) == (0.2, 0.4)
    assert row["sd"] == pytest.approx(math.sqrt(((0.1**2) * 2) / 2))  # sample standard deviation
    diff = summary["comparisons"]["btok-maxsim - btok-generative"]["mrr@10"]
    assert diff["mean"] == pytest.approx(-0.1) and diff["min"] == pytest.approx(-0.15)
    assert summary["seeds"] == [0, 1, 2]
    assert "| btok-maxsim - btok-generative |" in (tmp_path / "seeds.md").read_text()
    with pytest.raises(SystemExit, match="seed 1 appears twice"):
        seeds.main([paths[0], paths[1], paths[1]])
