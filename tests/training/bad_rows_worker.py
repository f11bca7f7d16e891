"""One rank of the two-process gloo test of a row that cannot be decoded
(tests/training/test_bad_rows.py): trains with ``on_bad_row="error"`` and writes what it raised."""

from __future__ import annotations

import json
import os


def run(rank: int, world: int, out_dir: str, folder: str, data: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import torch

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank, world_size=world
    )
    from btok_model.training import DataSource, MixedDataset, build_model, train
    from btok_model.training.bad_rows import BadRowError
    from tests.helpers.training import tiny_recipe

    recipe = tiny_recipe(max_steps=2, batch_size=2, lora_r=0, on_bad_row="error")
    model = build_model(folder, recipe)
    result = {"rank": rank}
    try:
        train(
            model,
            MixedDataset([DataSource(data)]),
            recipe,
            os.path.join(out_dir, "run"),
            save=False,
            ddp_backend="gloo",
        )
        result["finished"] = True
    except BadRowError as err:
        result.update(error=str(err), rows=[str(r) for r in err.rows], checkpoint=err.checkpoint)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    torch.distributed.destroy_process_group()
