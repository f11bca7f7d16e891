"""Checkpoint I/O of :class:`~btok_model.training.trainer.BTokTrainer`: what a BTok checkpoint
holds, how it is written (FSDP2's full state gathered into an unsharded copy first) and read back.

A checkpoint (and a final save) is a folder :meth:`BTokModel.from_pretrained` loads (LoRA
merged), plus ``trainable_parameters.safetensors`` (the trainable tensors, when some parameters
are frozen: merged weights cannot be split back into a base and adapters) and
``training_args.bin``; under FSDP the Trainer adds its own state (``pytorch_model_fsdp.bin``,
the optimizer's), which resuming under FSDP needs.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist

__all__ = [
    "FSDP_CHECKPOINT",
    "TRAINABLE_STATE",
    "check_fsdp_checkpoint",
    "configure_fsdp",
    "load_checkpoint_weights",
    "meta_copy",
    "save_model_folder",
    "save_trainable_state",
]

TRAINABLE_STATE = "trainable_parameters.safetensors"
FSDP_CHECKPOINT = "pytorch_model_fsdp"  # accelerate's name for the full model state of an FSDP checkpoint


def save_trainable_state(model: torch.nn.Module, directory: str) -> None:
    """Write the trainable parameters to ``directory`` when some parameters are frozen.

    A saved BTok folder holds merged weights (LoRA folded in), which cannot be split back
    into a base and adapters; resuming a LoRA or partly frozen run instead reloads the
    trainable tensors into a model built the same way. Full fine-tuning needs no extra file.
    """
    from safetensors.torch import save_file

    params = list(model.named_parameters())
    if all(p.requires_grad for _, p in params):
        return
    state = {name: p.detach().contiguous().cpu() for name, p in params if p.requires_grad}
    save_file(state, os.path.join(directory, TRAINABLE_STATE))


def load_checkpoint_weights(model: torch.nn.Module, directory: str, model_class: type | None = None) -> None:
    """Load a checkpoint written by :class:`BTokTrainer` into ``model`` (built as for the run;
    sharded by FSDP2 or not).

    Args:
        model: the model to load into.
        directory: the checkpoint folder.
        model_class: the class that reads a full fine-tuning checkpoint (default ``type(model)``;
            FSDP2 replaces a sharded model's class by a subclass of its own).

    Raises:
        ValueError: the checkpoint's trainable parameters do not match the model's (a run
            resumed with a different model, LoRA rank or frozen set).
    """
    path = os.path.join(directory, TRAINABLE_STATE)
    if os.path.isfile(path):
        from safetensors.torch import load_file

        state = load_file(path)
        params = dict(model.named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        if set(state) != trainable:
            raise ValueError(
                f"{path}: the checkpoint's trainable parameters differ from the model's "
                f"(only in checkpoint: {sorted(set(state) - trainable)[:5]}, only in model: "
                f"{sorted(trainable - set(state))[:5]}); resume with the same model and LoRA settings"
            )
        for name, value in state.items():
            if params[name].shape != value.shape:
                raise ValueError(
                    f"{path}: {name} has shape {tuple(value.shape)}, the model's is {tuple(params[name].shape)}"
                )
        _load_state(model, state, strict=False)
        return
    loaded = (model_class or type(model)).from_pretrained(directory, attn_implementation=None)
    _load_state(model, loaded.state_dict(), strict=True)


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], strict: bool) -> None:
    """Copy full (unsharded) tensors into ``model``'s parameters, sharded by FSDP2 or not."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        # Every rank reads the checkpoint and keeps its own shard.
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=strict))
        return
    model.load_state_dict(state, strict=strict)


def configure_fsdp(plugin, model, args) -> None:
    """Check the FSDP settings BTokTrainer supports; shard the backbone's decoder layers by default."""
    if args.save_on_each_node:
        raise ValueError(
            "save_on_each_node is not supported under FSDP: the full state dict is gathered on rank 0 only"
        )
    if plugin.fsdp_version != 2:
        raise ValueError(
            f"BTokTrainer supports FSDP2 only (fsdp_config={{'version': 2}}), got fsdp_version={plugin.fsdp_version}"
        )
    if "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        raise ValueError(
            "BTokTrainer saves BTok model folders from the full state dict: fsdp_config 'state_dict_type' must be "
            f"FULL_STATE_DICT, got {plugin.state_dict_type}"
        )
    if plugin.transformer_cls_names_to_wrap is None:  # the transformers model's decoder layers
        layers = (getattr(m, "_no_split_modules", None) for m in model.modules())
        plugin.transformer_cls_names_to_wrap = list(next((names for names in layers if names), []))


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose parameters live on the meta device (no memory), tied
    parameters still tied, buffers and everything else copied; the tokenizer is shared."""
    memo = {
        id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for p in model.parameters()
    }
    for shared in (getattr(model, "tokenizer", None), getattr(model, "processor", None)):
        if shared is not None:
            memo[id(shared)] = shared
    return copy.deepcopy(model, memo)


def _materialize(meta_model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """``meta_model`` (from :func:`meta_copy`, used once) with the values of a full state dict.

    Raises:
        ValueError: the state dict lacks a parameter or persistent buffer, or has extra keys.
    """
    expected = set(meta_model.state_dict())
    if set(state_dict) != expected:
        raise ValueError(
            f"the gathered state dict does not match the model (missing: {sorted(expected - set(state_dict))[:5]}, "
            f"unexpected: {sorted(set(state_dict) - expected)[:5]})"
        )
    replaced: dict[int, torch.nn.Parameter] = {}
    for module_name, module in meta_model.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in replaced:  # a tied parameter gets one tensor, shared again
                value = state_dict[prefix + name]
                replaced[id(p)] = torch.nn.Parameter(value.detach().clone(), requires_grad=p.requires_grad)
            module._parameters[name] = replaced[id(p)]
        for name, b in module._buffers.items():
            if b is not None and prefix + name in state_dict:
                b.copy_(state_dict[prefix + name])
    return meta_model


def save_model_folder(trainer, output_dir: str, merge_adapters: bool = True) -> None:
    """Write ``trainer``'s model as a BTok folder (+ the trainable tensors and the training
    arguments) to ``output_dir``.

    Every rank calls it: under FSDP the full state dict is gathered first (a collective,
    accelerate's ``get_state_dict``) into an unsharded copy of the model on the meta device
    (``trainer.unsharded_copy``, from :func:`meta_copy`); the process that saves
    (``args.should_save``) writes.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.is_fsdp_enabled:
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
        if trainer.args.should_save:
            model = _materialize(meta_copy(trainer.unsharded_copy), state_dict)
    if trainer.args.should_save:
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir, merge_adapters=merge_adapters)
        save_trainable_state(model, output_dir)
        torch.save(trainer.args, os.path.join(output_dir, "training_args.bin"))


def check_fsdp_checkpoint(checkpoint: str, fsdp: bool, device) -> None:
    """Refuse to resume ``checkpoint`` in the other mode than it was written in (with or without FSDP).

    Under FSDP every rank looks for the Trainer's FSDP state and all raise, or none (an all-reduce).

    Raises:
        ValueError: naming the checkpoint and the mode to resume it in.
    """
    path = os.path.join(checkpoint, f"{FSDP_CHECKPOINT}.bin")
    if not fsdp:
        if os.path.isfile(path):
            raise ValueError(f"{checkpoint} was written under FSDP: resume it with FSDP (--fsdp)")
        return
    found = torch.tensor([int(os.path.isfile(path))], device=device)
    dist.all_reduce(found, op=dist.ReduceOp.MIN)
    if not found.item():
        raise ValueError(
            f"{checkpoint}: no {FSDP_CHECKPOINT}.bin (the Trainer's FSDP state, with the optimizer's in "
            "optimizer.bin): a checkpoint written without FSDP resumes without FSDP"
        )
