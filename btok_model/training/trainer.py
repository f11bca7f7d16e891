"""The transformers ``Trainer`` for BTok embedders (accelerate underneath).

:class:`BTokTrainer` overrides the Trainer's extension points a contrastive + generative
objective needs: ``compute_loss`` (the model's own loss with the generative weight of the
Trainer's global step, read from the :class:`~btok_model.training.schedule.GenerativeSchedule`
there, and this rank's shares, :class:`~btok_model.embedder.losses.LossWeights`; its two parts
recorded for the logs), ``training_step`` for GradCache batches, ``get_batch_samples`` (the rows
replaced because they could not be decoded: counted and named, or the run stopped after a
checkpoint -- :mod:`btok_model.training.bad_rows`), ``log``, ``get_train_dataloader`` (a
mixture's own sampler, with the Trainer's data-loader workers) and ``save_model``. Checkpoint
I/O is :mod:`btok_model.training.checkpoints`; one private method is overridden,
``_load_from_checkpoint``, because the Trainer has no public hook for how a checkpoint's weights
are read. The batch builder keeps no state, so ``dataloader_num_workers`` may be set. Workers
start by ``fork`` unless they read Lance tables (a source in the Lance layout): Lance is not
fork-safe (its runtime's threads do not survive a fork, and a forked reader can deadlock), so
then they start by ``spawn`` (:func:`worker_start_method`), each opening the tables afresh.

Distributed training runs under ``torchrun`` with DDP: each rank embeds its share of the
batch and scores its queries against the candidates of every rank
(:func:`btok_model.embedder.losses.gather_with_grad` sends the gradients back to the owner),
so a step with N ranks computes the loss and gradients of the concatenated batch. GradCache
batches call ``embed_batch`` outside DDP's forward, so their gradients are averaged across
ranks after the step (:func:`~btok_model.training.gradcache.average_gradients`).

FSDP (``TrainingArguments(fsdp=True, fsdp_config={"version": 2})``, accelerate's FSDP2) shards
the model with ``fully_shard``: each decoder layer of the backbone is its own unit, the BTok
model is the root; the cross-rank gather and the loss weighting are as under DDP. A GradCache
step calls ``embed_batch`` through FSDP's hooks and lets only its last backward reduce-scatter.
On the CPU (gloo), accelerate leaves FSDP off -- it turns the plugin on only for accelerator
devices -- so :meth:`BTokTrainer.create_accelerator_and_postprocess` turns it on in the
accelerator's state itself, and the CPU tests run the same FSDP path. DeepSpeed is refused.

A :class:`~btok_model.training.mixed_dataset.MixedDataset` is read in the order of its own
sampler (:mod:`btok_model.training.sampler`), whose epoch is set from the step count at the
start of every epoch, as the Trainer counts epochs when it resumes, so a resumed run continues
the same order.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from transformers import Trainer, TrainerCallback

from ..embedder.losses import LossWeights
from .bad_rows import ON_BAD_ROW, BadRow, BadRowError, BadRowLog, bad_rows_path
from .checkpoints import check_fsdp_checkpoint, configure_fsdp, load_checkpoint_weights, meta_copy, save_model_folder
from .collator import ChunkedBatch, GradCacheChunk, ReplacedRows, TrainingCollator
from .gradcache import average_gradients, grad_cache_step
from .mixed_dataset import MixedDataset
from .sampler import check_block_size
from .schedule import GenerativeSchedule

__all__ = ["BTokTrainer", "worker_start_method"]

logger = logging.getLogger(__name__)


def worker_start_method(num_workers: int, dataset: MixedDataset) -> str | None:
    """How data-loader workers start: None (the platform's default, ``fork`` on Linux) without
    workers or when ``dataset`` reads no Lance table, else ``"spawn"`` (Lance is not fork-safe;
    the dataset is then pickled to each worker, and its Lance tables reopen there)."""
    if num_workers and dataset.reads_lance:
        return "spawn"
    return None


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
        model: the embedder (an :class:`~btok_model.embedder.base.Embedder`).
        args: ``transformers.TrainingArguments``; ``remove_unused_columns`` is forced off
            (``dataloader_num_workers`` decode and collate in worker processes).
        train_dataset: examples (dicts), e.g. a :class:`~btok_model.training.mixed_dataset.MixedDataset`.
        schedule: the generative weight per step (default: the model's configured weight throughout).
        chunk_size, max_tokens: GradCache chunking (see
            :class:`~btok_model.training.collator.TrainingCollator`).
        source_block_size: with a :class:`~btok_model.training.mixed_dataset.MixedDataset`, draw blocks
            of this many examples from one source each (None: each source's share, shuffled);
            a multiple of ``per_device_train_batch_size x world_size x gradient_accumulation_steps``.
        save_adapters: the final :meth:`save_model` (not a checkpoint's) keeps PEFT adapters
            unmerged (:meth:`~btok_model.embedder.base.Embedder.save_pretrained`).
        source_block_mode: how the blocks reach the ranks: ``"strict"`` (one source per step) or
            ``"authors"`` (their stride; see :mod:`~btok_model.training.sampler`).
        generative_normalization: ``"token"`` or ``"authors"`` (see
            :class:`~btok_model.embedder.losses.LossWeights`; ``"authors"`` also sorts a batch by
            query length before it is chunked, as their GradCache does).
        on_bad_row: a row that cannot be decoded is replaced by another draw from its source,
            counted and named once (``"skip"``), or stops the run after a checkpoint, every rank
            told first (``"error"``: :class:`~btok_model.training.bad_rows.BadRowError`).
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
        on_bad_row: str = "skip",
        **kwargs,
    ):
        if on_bad_row not in ON_BAD_ROW:
            raise ValueError(f"on_bad_row must be one of {list(ON_BAD_ROW)}, got {on_bad_row!r}")
        self.on_bad_row = on_bad_row
        self.mixture_sampler = _mixture_sampler(train_dataset, args, source_block_size, source_block_mode)
        args.remove_unused_columns = False
        self.schedule = schedule if schedule is not None else GenerativeSchedule(model.config.generative_weight, None)
        self.generative_weight = self.schedule.weight_at(0)  # the weight the last loss read (for the logs)
        LossWeights(0.0, normalization=generative_normalization)  # checks the name
        self.generative_normalization = generative_normalization
        self.save_adapters = save_adapters
        self.training_collator = TrainingCollator(
            model.collator,
            self.schedule.ever_on,
            chunk_size=chunk_size,
            max_tokens=max_tokens,
            sort_by_query_length=generative_normalization == "authors",
        )
        callbacks = list(kwargs.pop("callbacks", None) or [])
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
        self.unsharded_copy = meta_copy(model) if self.is_fsdp_enabled else None
        if self.is_fsdp_enabled:
            configure_fsdp(self.accelerator.state.fsdp_plugin, model, args)
        self._loss_parts: dict[str, list] = {"contrastive_loss": [], "generative_loss": []}
        self.bad_rows = BadRowLog(
            bad_rows_path(args.output_dir, args.process_index) if args.output_dir else None, on_bad_row == "skip"
        )

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
        workers = self.args.dataloader_num_workers
        start_method = worker_start_method(workers, self.train_dataset)
        if start_method is not None:
            logger.info("data-loader workers (%d) start by %s: Lance is not fork-safe", workers, start_method)
        loader = torch.utils.data.DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            sampler=self.mixture_sampler,
            collate_fn=self.data_collator,
            pin_memory=self.args.dataloader_pin_memory,
            drop_last=self.args.dataloader_drop_last,
            num_workers=workers,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers else None,
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
            multiprocessing_context=start_method,
        )
        return self.accelerator.prepare(loader)

    # -- rows that could not be decoded ---------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer's batches for one optimizer step, with the rows replaced in them taken off
        and recorded (:class:`~btok_model.training.bad_rows.BadRowLog`); with ``on_bad_row="error"``
        every rank learns whether any rank met one, and then all save a checkpoint and stop."""
        met: list[BadRow] = []

        def unwrapped():
            for batch in epoch_iterator:
                if isinstance(batch, ReplacedRows):
                    met.extend(batch.rows)
                    batch = batch.batch
                yield batch

        batches, num_items = super().get_batch_samples(unwrapped(), num_batches, device)
        self.bad_rows.add(met)
        if self.on_bad_row == "error":
            self._stop_on_bad_rows(met)
        return batches, num_items

    def _stop_on_bad_rows(self, met: list[BadRow]) -> None:
        """Raise :class:`~btok_model.training.bad_rows.BadRowError` on every rank, after a
        checkpoint of the steps done, when any rank met a bad row in this step's batches."""
        rows = list(met)
        if self.accelerator.num_processes > 1:
            count = torch.tensor([len(met)], device=self.args.device)
            dist.all_reduce(count)
            if not count.item():
                return
            gathered: list = [None] * self.accelerator.num_processes
            dist.all_gather_object(gathered, met)
            rows = [row for part in gathered for row in part]
        if not rows:
            return
        self._save_checkpoint(self.model_wrapped, trial=None)  # every rank: a collective under FSDP
        checkpoint = f"{self.args.output_dir}/checkpoint-{self.state.global_step}"
        raise BadRowError(rows, checkpoint)

    # -- the loss -------------------------------------------------------------------------
    def _btok_model(self, model=None):
        return self.accelerator.unwrap_model(model if model is not None else self.model)

    def _loss_weights(self, inputs) -> tuple[LossWeights, bool]:
        """This step's :class:`~btok_model.embedder.losses.LossWeights`, with the generative weight
        of the Trainer's global step, and whether any rank's batch has target tokens to score
        (none while the weight is 0)."""
        self.generative_weight = self.schedule.weight_at(self.state.global_step)
        num_targets = inputs.num_target_tokens if self.generative_weight != 0 else 0
        query_share, target_share = self._rank_shares(inputs.num_queries, num_targets)
        authors = self.generative_normalization == "authors"  # each rank's value is per example already
        weights = LossWeights(
            self.generative_weight,
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
        if weights.generative == 0 and inputs.num_target_tokens:  # the targets stay out of the forward
            chunks = [GradCacheChunk(c.embed_batch, c.embed_batch) for c in inputs.chunks]
            inputs = replace(inputs, chunks=chunks, num_target_tokens=0)
        btok_model = self._btok_model(model)
        scale = 1.0 / self.current_gradient_accumulation_steps
        backward = self.accelerator.backward
        if self.is_fsdp_enabled:
            backward = self._fsdp_chunk_backward(btok_model, len(inputs.chunks))
        outputs = grad_cache_step(
            btok_model, inputs, backward, weights, scale=scale, autocast=self.accelerator.autocast
        )
        if self.accelerator.sync_gradients and not self.is_fsdp_enabled:
            average_gradients(btok_model, self.accelerator.num_processes)
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
            logs["generative_weight"] = self.generative_weight  # the weight the last step's loss read
            replaced = torch.tensor(float(self.bad_rows.replaced), device=self.args.device)
            if self.accelerator.num_processes > 1:
                replaced = self.accelerator.gather(replaced[None]).sum()
            if replaced:
                logs["bad_rows_replaced"] = int(replaced)
        super().log(logs, start_time)

    # -- checkpoints ------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write a folder :meth:`BTokModel.from_pretrained` loads (+ the trainable tensors for
        resuming and the training arguments; :func:`~btok_model.training.checkpoints.save_model_folder`);
        the Trainer's checkpoints call it too. Every rank calls it (under FSDP it gathers)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        save_model_folder(self, output_dir, merge_adapters=not (self.save_adapters and not _internal_call))
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load a checkpoint's weights from the BTok files :meth:`save_model` wrote.

        A private method of the Trainer, overridden because nothing public says how a checkpoint's
        weights are read: its own reader expects the model's state dict in ``model.safetensors``,
        while a BTok checkpoint holds the backbone's (LoRA merged) and the trainable tensors. The
        Trainer calls it at the point of ``train(resume_from_checkpoint=...)`` where the weights
        must be in place (after FSDP has sharded the model, before the optimizer state loads:
        under FSDP the Trainer then loads the optimizer state its FSDP checkpoint holds).
        """
        check_fsdp_checkpoint(resume_from_checkpoint, self.is_fsdp_enabled, self.args.device)
        model_class = type(self.unsharded_copy) if self.is_fsdp_enabled else None
        load_checkpoint_weights(self._btok_model(model), resume_from_checkpoint, model_class)
