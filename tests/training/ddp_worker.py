"""One rank of the two-process gloo test (tests/training/test_distributed.py).

Each rank trains one SGD step (lr 1, so the update is minus the gradient) with
``BTokTrainer`` under DDP -- once with plain batches, once with GradCache chunks, once with
GradCache and InfoNCE on MaxSim scores summed over Matryoshka dimensions -- and rank 0 writes
the updated trainable weights and the logged losses.
"""

from __future__ import annotations

import os

# (name, GradCache chunk size, data, loss): "one-target" data gives the second rank no target
# tokens, so the logged generative loss must count that rank as 0 in the mean over ranks; the
# loss is a key of LOSSES.
CASES = (
    ("plain", None, "all", "cosine"),
    ("chunked", 2, "all", "cosine"),
    ("one-target", None, "one-target", "cosine"),
    ("maxsim-matryoshka", 2, "all", "maxsim-matryoshka"),
)
# Recipe settings of each loss: the multi-vector candidates [n, K, H] gathered across ranks and
# through GradCache's cache, at two truncations.
LOSSES = {"cosine": {}, "maxsim-matryoshka": {"similarity": "maxsim", "matryoshka_dims": [16, "full"]}}


def run(rank: int, world: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    import torch

    # A rendezvous file instead of a TCP port: a free port picked by the parent can be taken by
    # another process before the ranks bind it. accelerate reuses an initialised group.
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank, world_size=world
    )
    from tests.helpers.training import case_data, one_step_recipe, tiny_model, train_one_step, trainable

    try:
        for name, chunk_size, data, loss in CASES:
            recipe = one_step_recipe(batch_size=4, chunk_size=chunk_size, **LOSSES[loss])
            model = tiny_model(recipe)
            trainer = train_one_step(
                model, recipe, case_data(data), os.path.join(out_dir, f"run-{name}-{rank}"), distributed=True
            )
            if rank == 0:
                torch.save(
                    {"weights": trainable(model), "log": trainer.state.log_history[0]},
                    os.path.join(out_dir, f"{name}.pt"),
                )
        # Both ranks leave together and tear gloo down before the interpreter exits: a rank
        # that exits with the group alive aborts in gloo's thread destructors ("terminate
        # called without an active exception", SIGABRT), which failed a CI run.
        torch.distributed.barrier()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
