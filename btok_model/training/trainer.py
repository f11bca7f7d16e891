"""The transformers ``Trainer`` for BTok embedders (accelerate underneath).

:class:`BTokTrainer` overrides the Trainer's documented extension points a contrastive +
generative objective needs: ``compute_loss`` (the model's own loss, with the step's generative
weight -- set by :class:`~btok_model.training.schedule.GenerativeWeightCallback` -- and this
rank's shares, :class:`~btok_model.embedder.losses.LossWeights`; its two parts recorded for the
logs), ``training_step`` for GradCache batches, ``log`` (``contrastive_loss``,
``generative_loss`` and ``generative_weight`` beside ``loss``), ``get_train_dataloader`` (a
mixture's own sampler) and ``save_model`` (the BTok model's own folder). One private method is
overridden, ``_load_from_checkpoint``, because the Trainer has no public hook for how a
checkpoint's weights are read (see there).

Distributed training runs under ``torchrun`` with DDP: each rank embeds its share of the
batch and scores its queries against the candidates of every rank
(:func:`btok_model.embedder.losses.gather_with_grad` sends the gradients back to the owner),
so a step with N ranks computes the loss and gradients of the concatenated batch. GradCache
batches call ``embed_batch`` outside DDP's forward, so their gradients are averaged across
ranks here, once per optimizer step.

FSDP (``TrainingArguments(fsdp=True, fsdp_config={"version": 2})``, accelerate's FSDP2) shards
the model with ``fully_shard``: each decoder layer of the backbone is its own unit (the
backbone's ``_no_split_modules`` unless ``transformer_layer_cls_to_wrap`` names others), the
BTok model is the root. The cross-rank gather and the loss weighting are the same as under
DDP (FSDP's reduce-scatter averages gradients over ranks as DDP does). A GradCache step
calls ``embed_batch`` through FSDP's hooks and lets only its last backward reduce-scatter.
Saves gather the full state dict (accelerate's ``get_state_dict``) into an unsharded copy of
the model kept on the meta device, so a checkpoint is the same folder as without FSDP
(LoRA merged); a checkpoint also holds the Trainer's FSDP state (``pytorch_model_fsdp.bin``,
the optimizer), which resuming under FSDP loads. On the CPU (gloo), accelerate leaves FSDP
off -- it turns the plugin on only for accelerator devices, and offers no setting that
changes that -- so :meth:`BTokTrainer.create_accelerator_and_postprocess` turns it on in the
accelerator's state itself, and the CPU tests run the same FSDP path. DeepSpeed is refused.

A :class:`~btok_model.training.mixed_dataset.MixedDataset` is read in the order of its own sampler
(:mod:`btok_model.training.sampler`): each source's weighted share, shuffled, or with
``source_block_size`` blocks of that many examples from one source each (checked to line up
with the steps, so every rank draws from one source at every step). The sampler's epoch is set
from the step count at the start of every epoch, as the Trainer counts epochs when it resumes,
so a resumed run continues the same order.
"""

from __future__ import annotations

import copy
import math
import os

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from transformers import Trainer, TrainerCallback

from ..embedder.losses import LossWeights
from .batch_builder import ChunkedBatch, TrainingCollator
from .gradcache import grad_cache_step
from .mixed_dataset import MixedDataset
from .sampler import check_block_size
from .schedule import GenerativeSchedule, GenerativeWeightCallback

__all__ = ["TRAINABLE_STATE", "BTokTrainer", "load_checkpoint_weights", "save_trainable_state"]

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


def _configure_fsdp(plugin, model, args) -> None:
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


def _mixture_sampler(dataset, args, block_size: int | None, mode: str = "strict"):
    """The sampler of a :class:`~btok_model.training.mixed_dataset.MixedDataset` (None for other datasets).

    Raises:
        ValueError: ``block_size`` with a dataset that is not a MixedDataset, or one that does
            not line up with the steps (:func:`~btok_model.training.sampler.check_block_size`).
    """
    if not isinstance(dataset, MixedDataset):
        if block_size is not None:
            raise ValueError(
                "source_block_size needs a MixedDataset (training sources to draw blocks from), got "
                f"{type(dataset).__name__}"
            )
        return None
    if block_size is not None:
        check_block_size(
            block_size, args.per_device_train_batch_size, args.world_size, args.gradient_accumulation_steps, mode
        )
    return dataset.sampler(
        args.seed, block_size, mode=mode, per_device=args.per_device_train_batch_size, world_size=args.world_size
    )


def _meta_copy(model: torch.nn.Module) -> torch.nn.Module:
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
    """``meta_model`` (from :func:`_meta_copy`, used once) with the values of a full state dict.

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


class _BatchCountCallback(TrainerCallback):
    """Places the batch builder's count at the run's first step (0, or the resumed step)."""

    def __init__(self, collator: TrainingCollator):
        self.collator = collator

    def on_train_begin(self, args, state, control, **kwargs):
        self.collator.start_at(state.global_step)


class _SamplerEpochCallback(TrainerCallback):
    """Sets the sampler's epoch at the start of every epoch, counted from the optimizer step as
    the Trainer counts it when it resumes: a resumed run's batches are skipped by a dataloader
    wrapper through which the Trainer's own ``set_epoch`` does not reach the sampler."""

    def __init__(self, sampler):
        self.sampler = sampler

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if train_dataloader is None:  # no prepared dataloader to count the epoch's steps with
            raise RuntimeError("BTokTrainer: the Trainer began an epoch without telling its callbacks the dataloader")
        steps_per_epoch = max(math.ceil(len(train_dataloader) / args.gradient_accumulation_steps), 1)
        self.sampler.set_epoch(state.global_step // steps_per_epoch)


class BTokTrainer(Trainer):
    """``transformers.Trainer`` for a :class:`~btok_model.BTokModel` or a
    :class:`~btok_model.embedder.pooled.PooledEmbedder` (see the module docstring).

    Args:
        model: the embedder (an :class:`~btok_model.embedder.core.Embedder`).
        args: ``transformers.TrainingArguments``; ``remove_unused_columns`` is forced off
            and ``dataloader_num_workers`` must be 0 (the batch builder counts steps).
        train_dataset: examples (dicts), e.g. a :class:`~btok_model.training.mixed_dataset.MixedDataset`.
        schedule: the generative weight per step (default: the model's configured weight throughout).
        chunk_size, max_tokens: GradCache chunking (see
            :class:`~btok_model.training.batch_builder.TrainingCollator`).
        source_block_size: with a :class:`~btok_model.training.mixed_dataset.MixedDataset`, draw blocks
            of this many examples from one source each (None: each source's share, shuffled);
            a multiple of ``per_device_train_batch_size x world_size x gradient_accumulation_steps``.
        save_adapters: the final :meth:`save_model` (not a checkpoint's) keeps PEFT adapters
            unmerged (:meth:`~btok_model.embedder.core.Embedder.save_pretrained`).
        source_block_mode: how the blocks reach the ranks: ``"strict"`` (one source per step) or
            ``"authors"`` (their stride; see :mod:`~btok_model.training.sampler`).
        generative_normalization: ``"token"`` or ``"authors"`` (see
            :class:`~btok_model.embedder.losses.LossWeights`; ``"authors"`` also sorts a batch by
            query length before it is chunked, as their GradCache does).
        **kwargs: passed to ``Trainer`` (``callbacks``, ...).
    """

    def __init__(
        self,
        model,
        args,
        train_dataset,
        *,
        schedule: GenerativeSchedule | None = None,
        chunk_size: int | None = None,
        max_tokens: int | None = None,
        source_block_size: int | None = None,
        generative_normalization: str = "token",
        source_block_mode: str = "strict",
        save_adapters: bool = False,
        **kwargs,
    ):
        self.mixture_sampler = _mixture_sampler(train_dataset, args, source_block_size, source_block_mode)
        if args.dataloader_num_workers:
            raise ValueError(
                "BTokTrainer collates in the training process (dataloader_num_workers=0): the batch builder follows "
                f"the generative schedule step by step; got dataloader_num_workers={args.dataloader_num_workers}"
            )
        args.remove_unused_columns = False
        self.schedule = schedule if schedule is not None else GenerativeSchedule(model.config.generative_weight, None)
        self.generative_weight = GenerativeWeightCallback(self.schedule)
        LossWeights(0.0, normalization=generative_normalization)  # checks the name
        self.generative_normalization = generative_normalization
        self.save_adapters = save_adapters
        self.training_collator = TrainingCollator(
            model.collator,
            self.schedule,
            chunk_size=chunk_size,
            max_tokens=max_tokens,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            sort_by_query_length=generative_normalization == "authors",
        )
        callbacks = list(kwargs.pop("callbacks", None) or [])
        callbacks += [_BatchCountCallback(self.training_collator), self.generative_weight]
        if self.mixture_sampler is not None:
            callbacks.append(_SamplerEpochCallback(self.mixture_sampler))
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            data_collator=self.training_collator,
            callbacks=callbacks,
            **kwargs,
        )
        if self.is_deepspeed_enabled:
            raise ValueError(
                "BTokTrainer supports single-process, DDP and FSDP training (torchrun); DeepSpeed is not supported"
            )
        self._unsharded_copy = _meta_copy(model) if self.is_fsdp_enabled else None
        if self.is_fsdp_enabled:
            _configure_fsdp(self.accelerator.state.fsdp_plugin, model, args)
        self._loss_parts: dict[str, list] = {"contrastive_loss": [], "generative_loss": []}

    def create_accelerator_and_postprocess(self):
        """The Trainer's accelerator; on the CPU with ``fsdp`` set, FSDP turned on as on GPUs.

        accelerate's ``AcceleratorState`` switches to ``DistributedType.FSDP`` only for
        accelerator devices (its multi-GPU/NPU/XPU/... branch) and would otherwise run a
        ``MULTI_CPU`` job as plain DDP, silently ignoring ``fsdp``; no setting or environment
        variable of accelerate 1.x changes that (README, "Train and evaluate"). FSDP2's
        ``fully_shard`` works on CPU tensors with gloo, so the FSDP plugin and distributed type
        are set here through the public attributes of the two accelerate state objects, as
        accelerate's own constructor leaves them on a GPU: the process state (``PartialState``)
        too, because every later ``AcceleratorState()`` (the prepared optimizer builds one)
        copies its distributed type from there.
        """
        super().create_accelerator_and_postprocess()
        state = self.accelerator.state
        if self.args.fsdp and not self.is_fsdp_enabled and state.distributed_type == DistributedType.MULTI_CPU:
            from accelerate import PartialState
            from accelerate.utils import FullyShardedDataParallelPlugin

            plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            if state.mixed_precision != "no":
                plugin.set_mixed_precision(state.mixed_precision)
            state.fsdp_plugin = plugin
            state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
            self.is_fsdp_enabled = True

    def get_train_dataloader(self):
        """A :class:`~btok_model.training.mixed_dataset.MixedDataset` read in its own sampler's
        order (batched, collated and prepared by accelerate as the Trainer's own loader is);
        any other dataset: the Trainer's loader."""
        if self.mixture_sampler is None:
            return super().get_train_dataloader()
        loader = torch.utils.data.DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            sampler=self.mixture_sampler,
            collate_fn=self.data_collator,
            pin_memory=self.args.dataloader_pin_memory,
            drop_last=self.args.dataloader_drop_last,
        )
        return self.accelerator.prepare(loader)

    # -- the loss -------------------------------------------------------------------------
    def _btok_model(self, model=None):
        return self.accelerator.unwrap_model(model if model is not None else self.model)

    def _loss_weights(self, inputs) -> tuple[LossWeights, bool]:
        """This step's :class:`~btok_model.embedder.losses.LossWeights` (after checking that
        ``inputs`` was built for this step), and whether any rank's batch has target tokens."""
        step = self.state.global_step
        built_for = self.training_collator.take_built_step()
        if built_for is not None and built_for != step:
            raise RuntimeError(
                f"a batch collated for step {built_for} reached step {step}: the training collator must run in "
                "order in the training process (no dataloader workers)"
            )
        query_share, target_share = self._rank_shares(inputs.num_queries, inputs.num_target_tokens)
        authors = self.generative_normalization == "authors"  # each rank's value is per example already
        weights = LossWeights(
            self.generative_weight.weight,
            query_share,
            1.0 if target_share is None or authors else target_share,
            self.generative_normalization,
        )
        return weights, target_share is not None

    def _record(self, outputs, targets_somewhere: bool) -> None:
        """Keep the step's loss parts (already this rank's shares) for the next log."""
        self._loss_parts["contrastive_loss"].append(outputs.contrastive_loss.detach().float())
        generative = outputs.generative_loss
        if generative is None and targets_somewhere:
            # Other ranks scored target tokens: this rank's weighted part of the mean is 0, and
            # the log's mean over ranks must count it.
            generative = torch.zeros((), device=outputs.contrastive_loss.device)
        if generative is not None:
            self._loss_parts["generative_loss"].append(generative.detach().float())

    def _rank_shares(self, num_queries: int, num_targets: int) -> tuple[float, float | None]:
        """How this rank's mean losses are weighted so that the gradient mean over ranks (DDP,
        FSDP) is the mean over the whole global batch: ``(queries here / mean queries per rank,
        target tokens here / mean target tokens per rank)``, the latter None when no rank has a
        target token; ``(1, 1)`` on one process."""
        world = self.accelerator.num_processes
        if world == 1:
            return 1.0, (1.0 if num_targets else None)
        counts = torch.tensor(
            [num_queries, num_targets, num_targets == 0], dtype=torch.float64, device=self.args.device
        )
        dist.all_reduce(counts)
        total_queries, total_targets, ranks_without_targets = counts.tolist()
        if self.is_fsdp_enabled:
            self._fsdp_reduce_unused(0 < ranks_without_targets < world)
        return num_queries * world / total_queries, (num_targets * world / total_targets if total_targets else None)

    def _fsdp_reduce_unused(self, mixed: bool) -> None:
        """On a step where some ranks score target tokens and others do not, an untied LM head
        has a gradient on some ranks only; FSDP2 must then reduce-scatter a zero gradient for it
        on the others, or the ranks' reduce-scatters differ in size. Otherwise it is left off,
        so parameters no rank used keep no gradient (as under DDP)."""
        setter = getattr(self.model_wrapped, "set_reduce_scatter_unused_params", None)
        if setter is None:
            if mixed:
                raise RuntimeError(
                    "under FSDP with this torch, every rank's batch must have target tokens or none must: "
                    "FSDPModule.set_reduce_scatter_unused_params (needed when only some ranks use the LM head) is "
                    "missing; set generative_weight to 0, give every example a target, or train with DDP"
                )
            return
        setter(mixed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's own loss with this step's generative weight, each part weighted by this
        rank's share of the global batch; the parts are logged."""
        weights, targets_somewhere = self._loss_weights(inputs)
        outputs = model(inputs, loss_weights=weights)
        self._record(outputs, targets_somewhere)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """A plain batch: the Trainer's own step. A chunked batch: a GradCache step."""
        if not isinstance(inputs, ChunkedBatch):
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        weights, targets_somewhere = self._loss_weights(inputs)
        btok_model = self._btok_model(model)
        scale = 1.0 / self.current_gradient_accumulation_steps
        backward = self.accelerator.backward
        if self.is_fsdp_enabled:
            backward = self._fsdp_chunk_backward(btok_model, len(inputs.chunks))
        outputs = grad_cache_step(
            btok_model, inputs, backward, weights, scale=scale, autocast=self.accelerator.autocast
        )
        if self.accelerator.sync_gradients and not self.is_fsdp_enabled:
            self._average_gradients(btok_model)
        self._record(outputs, targets_somewhere)
        return outputs.loss * scale

    def _fsdp_chunk_backward(self, model, num_chunks: int):
        """``backward`` for the ``num_chunks`` re-runs of a GradCache step under FSDP2: the
        chunks' gradients accumulate unsharded and only the step's last backward reduce-scatters
        them (none does inside a gradient-accumulation window: the Trainer's ``no_sync`` then
        restores syncing). Chunks call ``embed_batch``, which runs FSDP's hooks like ``forward``."""
        from torch.distributed.fsdp import register_fsdp_forward_method

        if not getattr(model, "_btok_fsdp_embed_batch", False):
            register_fsdp_forward_method(model, "embed_batch")
            model._btok_fsdp_embed_batch = True
        sync = self.accelerator.sync_gradients
        calls = iter(range(1, num_chunks + 1))

        def backward(loss: torch.Tensor) -> None:
            model.set_requires_gradient_sync(sync and next(calls) == num_chunks)
            self.accelerator.backward(loss)

        return backward

    def _average_gradients(self, model) -> None:
        """Mean of every trainable gradient across ranks (what DDP's backward would do)."""
        world = self.accelerator.num_processes
        if world == 1:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:  # unused on this rank: every rank must join the same reductions
                p.grad = torch.zeros_like(p)
        bucket, size, limit = [], 0, 1 << 25
        for p in params + [None]:
            if p is not None:
                bucket.append(p)
                size += p.numel()
            if bucket and (p is None or size >= limit):
                flat = torch.cat([q.grad.reshape(-1) for q in bucket])
                dist.all_reduce(flat)
                flat /= world
                offset = 0
                for q in bucket:
                    q.grad.copy_(flat[offset : offset + q.numel()].view_as(q.grad))
                    offset += q.numel()
                bucket, size = [], 0

    # -- logging ----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean contrastive and generative losses since the last log to a training log."""
        if "loss" in logs:
            for name, values in self._loss_parts.items():
                mean = torch.stack(values).mean() if values else torch.tensor(float("nan"))
                mean = mean.to(self.args.device)
                if self.accelerator.num_processes > 1:
                    mean = self.accelerator.gather(mean[None]).nanmean()
                if not torch.isnan(mean):
                    logs[name] = round(float(mean), 4)
                values.clear()
            logs["generative_weight"] = self.generative_weight.weight  # the weight the last step's loss read
        super().log(logs, start_time)

    # -- checkpoints ------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write a folder :meth:`BTokModel.from_pretrained` loads (+ the trainable tensors for
        resuming and the training arguments); the Trainer's checkpoints call it too.

        Every rank calls it: under FSDP the full state dict is gathered first (a collective,
        accelerate's ``get_state_dict``) into an unsharded copy of the model on the meta device;
        the process that saves (``args.should_save``) writes.
        """
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model = self._btok_model()
        if self.is_fsdp_enabled:
            state_dict = self.accelerator.get_state_dict(self.model)
            if self.args.should_save:
                model = _materialize(_meta_copy(self._unsharded_copy), state_dict)
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            model.save_pretrained(output_dir, merge_adapters=not (self.save_adapters and not _internal_call))
            save_trainable_state(model, output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load a checkpoint's weights from the BTok files :meth:`save_model` wrote.

        A private method of the Trainer, overridden because nothing public says how a checkpoint's
        weights are read: its own reader expects the model's state dict in ``model.safetensors``,
        while a BTok checkpoint holds the backbone's (LoRA merged) and the trainable tensors. The
        Trainer calls it at the point of ``train(resume_from_checkpoint=...)`` where the weights
        must be in place (after FSDP has sharded the model, before the optimizer state loads).
        """
        if self.is_fsdp_enabled:
            # The weights come from the BTok files as without FSDP; the Trainer then loads the
            # optimizer state its FSDP checkpoint holds, which a checkpoint without FSDP lacks.
            path = os.path.join(resume_from_checkpoint, f"{FSDP_CHECKPOINT}.bin")
            found = torch.tensor([int(os.path.isfile(path))], device=self.args.device)
            dist.all_reduce(found, op=dist.ReduceOp.MIN)  # every rank raises, or none
            if not found.item():
                raise ValueError(
                    f"{resume_from_checkpoint}: no {FSDP_CHECKPOINT}.bin (the Trainer's FSDP state, with the "
                    "optimizer's in optimizer.bin): a checkpoint written without FSDP resumes without FSDP"
                )
            load_checkpoint_weights(self._btok_model(model), resume_from_checkpoint, type(self._unsharded_copy))
            return
        if os.path.isfile(os.path.join(resume_from_checkpoint, f"{FSDP_CHECKPOINT}.bin")):
            raise ValueError(f"{resume_from_checkpoint} was written under FSDP: resume it with FSDP (--fsdp)")
        load_checkpoint_weights(self._btok_model(model), resume_from_checkpoint)
