"""One rank of the two-process FSDP test (tests/training/test_fsdp.py).

Each rank trains one SGD step (lr 1, so the update is minus the gradient) with
``BTokTrainer`` under FSDP2 (accelerate's, through ``TrainingArguments(fsdp=True)``) for every
case of :data:`CASES`; the ranks gather the full trainable weights and rank 0 writes them with
the logged losses. Cases with ``save`` also write a checkpoint (``checkpoint-1``, through the
Trainer's checkpoint path) and the final model folder.
"""

from __future__ import annotations

import os

# name -> (lora_r, GradCache chunk size, save, backbone family, data). "qwen2" unties its LM
# head; "one-target" data gives one rank no target tokens, so only the other uses the head;
# "baseline" trains the model without BToks (PooledEmbedder, last-token pooling).
CASES = {
    "full-plain": (0, None, True, "llama", "all"),
    "full-chunked": (0, 2, False, "llama", "all"),
    "lora-chunked": (4, 2, True, "llama", "all"),
    "untied-one-target": (0, None, False, "qwen2", "one-target"),
    "baseline": (4, None, True, "llama", "baseline"),
}


def case_model(recipe, family: str, data: str):
    """The case's model (``recipe`` from :func:`case_recipe` with ``data``)."""
    from tests.helpers.training import tiny_model

    return tiny_model(recipe, family=family, btoks=data != "baseline")


def reference_dir(lora_r: int, family: str, data: str) -> str:
    """The folder (in the test's output folder) of a case's single-process run."""
    return f"single-{lora_r}-{family}-{data}"


def run(rank: int, world: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import torch

    # A rendezvous file instead of a TCP port (see ddp_worker.py); accelerate reuses the group.
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank, world_size=world
    )
    from tests.helpers.training import case_data, examples, tiny_model, train_one_step

    try:
        for name, (lora_r, chunk_size, save, family, data) in CASES.items():
            recipe = case_recipe(4, lora_r, chunk_size, fsdp=True, save=save, data=data)
            model = case_model(recipe, family, data)
            trainer = train_one_step(model, recipe, case_data(data), os.path.join(out_dir, name), save=save)
            assert trainer.is_fsdp_enabled and type(trainer.model).__name__.startswith("FSDP")
            weights = full_trainable(trainer.model)
            if rank == 0:
                result = {"weights": weights, "log": trainer.state.log_history[0]}
                torch.save(result, os.path.join(out_dir, f"{name}.pt"))
        recipe = case_recipe(4, 4, 2, fsdp=True)
        recipe.bf16 = True  # FSDP's mixed precision (bf16 parameters and gradient reduction) + autocast
        trainer = train_one_step(tiny_model(recipe), recipe, examples(8), os.path.join(out_dir, "bf16"), save=False)
        if rank == 0:
            policy = str(trainer.accelerator.state.fsdp_plugin.mixed_precision_policy)
            torch.save({"log": trainer.state.log_history[0], "policy": policy}, os.path.join(out_dir, "bf16.pt"))
        accumulated = {}  # 2 micro-batches of 2 GradCache chunks per rank: FSDP as DDP
        for fsdp in (False, True):
            recipe = case_recipe(2, 0, 1, fsdp=fsdp)
            folder = os.path.join(out_dir, f"accumulated-{fsdp}")
            model = tiny_model(recipe)
            trainer = train_one_step(
                model, recipe, examples(8), folder, distributed=True, gradient_accumulation_steps=2
            )
            accumulated[fsdp] = {"weights": full_trainable(trainer.model), "log": trainer.state.log_history[0]}
        if rank == 0:
            torch.save(accumulated, os.path.join(out_dir, "accumulated.pt"))
        resume_run(rank, out_dir)
        # Both ranks leave together and tear gloo down before exiting (see ddp_worker.py).
        torch.distributed.barrier()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def case_recipe(
    batch_size: int, lora_r: int, chunk_size: int | None, fsdp: bool = False, save: bool = False, data: str = "all"
):
    from btok_model.embedder.config import PooledConfig
    from tests.helpers.training import one_step_recipe

    recipe = one_step_recipe(batch_size=batch_size, chunk_size=chunk_size)
    recipe.lora_r = lora_r
    recipe.fsdp = fsdp
    recipe.save_steps = 1 if save else 0
    if data == "baseline":
        recipe.embedder = PooledConfig(pooling="last")
    return recipe


def full_trainable(model) -> dict:
    """Every trainable parameter, unsharded (a collective: all ranks call it)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            value = p.full_tensor() if isinstance(p, DTensor) else p
            out[name] = value.detach().clone()
    return out


def resume_run(rank: int, out_dir: str) -> None:
    """Two AdamW steps under FSDP (LoRA and full fine-tuning) straight, and stopped after the
    first and resumed from its checkpoint in a new model; then a resume from a checkpoint
    written without FSDP."""
    import torch

    from btok_model.training import train
    from tests.helpers.training import StopAt, examples, tiny_model, tiny_recipe

    result = {}
    for lora_r in (4, 0):
        recipe = tiny_recipe(max_steps=2, batch_size=2, lr=1e-2, save_steps=1, lora_r=lora_r, fsdp=True)
        runs = os.path.join(out_dir, f"resume-{lora_r}")
        straight = train(tiny_model(recipe), examples(8), recipe, os.path.join(runs, "straight"), save=False)
        stopped = os.path.join(runs, "stopped")
        train(tiny_model(recipe), examples(8), recipe, stopped, save=False, callbacks=[StopAt(1)])
        checkpoint = os.path.join(stopped, "checkpoint-1")
        resumed = train(tiny_model(recipe), examples(8), recipe, stopped, save=False, resume=checkpoint)
        result[lora_r] = {
            "straight": full_trainable(straight.model),
            "resumed": full_trainable(resumed.model),
            "step": resumed.state.global_step,
        }
    try:
        checkpoint = os.path.join(out_dir, reference_dir(0, "llama", "all"), "checkpoint-1")  # written without FSDP
        train(tiny_model(recipe), examples(8), recipe, os.path.join(out_dir, "refused"), resume=checkpoint)
        result["refusal"] = "not refused"
    except ValueError as e:
        result["refusal"] = str(e)
    if rank == 0:
        torch.save(result, os.path.join(out_dir, "resume.pt"))
