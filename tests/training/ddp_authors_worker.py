"""One rank of the two-process gloo test of the authors' generative weighting
(tests/training/test_distributed_authors.py): one SGD step (lr 1) per case, rank 0 writes the
updated trainable weights and the log."""

from __future__ import annotations

import os

# (name, GradCache chunk size)
CASES = (("plain", None), ("chunked", 3))


def recipe_of(chunk_size):
    from tests.helpers.training import one_step_recipe

    return one_step_recipe(
        batch_size=4,
        chunk_size=chunk_size,
        source_block_size=8,
        generative_normalization="authors",
        hard_negatives=False,
    )


def dataset(out_dir: str):
    from btok_model.training import DataSource, MixedDataset

    return MixedDataset([DataSource(os.path.join(out_dir, "data.jsonl"), 1.0)], hard_negatives=False)


def run(rank: int, world: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import torch

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank, world_size=world
    )
    from tests.helpers.training import tiny_model, train_one_step, trainable

    try:
        for name, chunk_size in CASES:
            recipe = recipe_of(chunk_size)
            model = tiny_model(recipe)
            trainer = train_one_step(
                model, recipe, dataset(out_dir), os.path.join(out_dir, f"run-{name}-{rank}"), distributed=True
            )
            if rank == 0:
                torch.save(
                    {"weights": trainable(model), "log": trainer.state.log_history[0]},
                    os.path.join(out_dir, f"{name}.pt"),
                )
        torch.distributed.barrier()  # leave together (see ddp_worker.py)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
