"""The authors' generative weighting on two ranks: each rank weighs its own batch's generating
examples by its own batch size, and DDP averages the ranks; the contrastive part stays the
whole global batch's InfoNCE (candidates gathered across ranks)."""

import torch
import torch.multiprocessing as mp

from btok_model.datasets import write_jsonl
from btok_model.embedder import LossWeights
from tests.helpers.numerics import assert_tensors_close
from tests.helpers.training import sided_examples, tiny_model, trainable
from tests.training.ddp_authors_worker import CASES, dataset, recipe_of, run

WEIGHT = 2.0  # one_step_recipe's generative weight


def _rank_value(model, batch: list[dict], chunk_size) -> torch.Tensor:
    """One rank's authors' value: chunks after a stable sort by query length, each chunk's own
    value times its share of the rank's examples."""
    order = sorted(range(len(batch)), key=lambda i: (len(batch[i]["query"]), i))
    size = chunk_size or len(batch)
    total = torch.zeros(())
    for start in range(0, len(order), size):
        chunk = [batch[i] for i in order[start : start + size]]
        out = model(model.collate(chunk), loss_weights=LossWeights(1.0, normalization="authors"))
        if out.generative_loss is not None:
            total = total + out.generative_loss * (len(chunk) / len(batch))
    return total


def test_two_ranks_average_their_own_authors_values(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "data.jsonl", sided_examples())
    expected, logs = {}, {}
    for name, chunk_size in CASES:
        recipe = recipe_of(chunk_size)
        model = tiny_model(recipe).train()  # seeded: the ranks start from the same weights
        data = dataset(str(tmp_path))
        order = data.sampler(recipe.seed, recipe.source_block_size).order()[:8].tolist()
        ranks = [[data[i] for i in order[4 * r : 4 * r + 4]] for r in range(2)]  # accelerate deals batches in turn
        contrastive = model(model.collate(ranks[0] + ranks[1]), loss_weights=LossWeights(0.0)).loss
        generative = 0.5 * (_rank_value(model, ranks[0], chunk_size) + _rank_value(model, ranks[1], chunk_size))
        assert len({len(r["query"]) for r in ranks[0]}) > 1
        (contrastive + WEIGHT * generative).backward()
        expected[name] = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        logs[name] = (contrastive.detach().item(), generative.detach().item())

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(run, args=(2, str(tmp_path)), nprocs=2, join=True)
    untouched = trainable(tiny_model(recipe_of(None)))
    for name, _ in CASES:
        result = torch.load(tmp_path / f"{name}.pt")
        actual = {n: untouched[n] - p for n, p in result["weights"].items()}
        assert_tensors_close(actual, expected[name], 1e-5, f"{name} gradient")
        contrastive, generative = logs[name]
        assert abs(result["log"]["contrastive_loss"] - contrastive) <= 1e-4 * abs(contrastive), name
        assert abs(result["log"]["generative_loss"] - generative) <= 1e-4 * abs(generative), name
