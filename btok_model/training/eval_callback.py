"""Retrieval evaluation during training: metrics logged beside the losses, the best checkpoint kept.

:class:`RetrievalEvalCallback` evaluates the model every ``eval_steps`` optimizer steps on one
:class:`EvalSource`: a JSONL evaluation file (pairs or candidate lists, as ``python -m
btok_model.evaluate --data``) or MMEB-V2 datasets (as ``--mmeb-v2``, one score per dataset and
the paper's means). Its metrics (``eval_recall@1``, ``eval_overall``, ``eval_image``,
``eval_ImageNet-1K``, ...) join the training log of that step, beside the losses.

The best checkpoint is the Trainer's own: with ``TrainingArguments.metric_for_best_model`` set,
the callback records each new best value in ``TrainerState.best_metric`` /
``best_global_step`` (the fields the Trainer's evaluation loop fills), so the Trainer's
checkpointing names ``state.best_model_checkpoint`` (in ``trainer_state.json``) and its
``save_total_limit`` rotation never deletes it. A BTok checkpoint is a model folder, so the best
one loads with ``BTokModel.from_pretrained``; with ``load_best_model_at_end`` the callback also
loads its weights into the model when training ends, so the final save holds them.

Distributed runs: every rank evaluates the whole evaluation set with the same inputs (under FSDP
every forward pass is a collective, so all ranks must run the same passes; under DDP it costs
the other ranks' time instead of a gather), and rank 0's metrics are broadcast so every rank
keeps the same best checkpoint. Keep the evaluation set small (``--eval-limit``).
"""

from __future__ import annotations

import os
import time

import torch.distributed as dist
from transformers import TrainerCallback

__all__ = ["EvalSource", "RetrievalEvalCallback", "eval_callback_from_args", "load_eval_source"]


class EvalSource:
    """What is evaluated during training, opened and checked before training starts.

    Args:
        name: shown in logs.
        pairs_task: a task from :func:`~btok_model.evaluation.task_files.load_task`, or None.
        mmeb_tasks: opened MMEB-V2 datasets (:func:`~btok_model.evaluation.mmeb_v2.open_tasks`), or None.
        num_frames: frames sampled per MMEB-V2 video.
    """

    def __init__(self, name: str, pairs_task=None, mmeb_tasks=None, num_frames: int = 8):
        if (pairs_task is None) == (mmeb_tasks is None):
            raise ValueError("an EvalSource holds a JSONL task or MMEB-V2 datasets (one of them)")
        self.name, self.pairs_task, self.mmeb_tasks, self.num_frames = name, pairs_task, mmeb_tasks, num_frames

    def metric_names(self) -> list[str]:
        """The keys :meth:`evaluate` returns (without the ``eval_`` prefix)."""
        if self.pairs_task is not None:
            from ..evaluation.metrics import METRIC_NAMES
            from ..evaluation.task_files import CandidateListTask

            return list(METRIC_NAMES) + (["hit@1"] if isinstance(self.pairs_task, CandidateListTask) else [])
        tasks = self.mmeb_tasks
        names = ["overall"]
        names += list(dict.fromkeys(t.spec.modality for t in tasks))
        names += list(dict.fromkeys(t.spec.meta_task for t in tasks))
        return names + [t.name for t in tasks]

    def evaluate(self, model, batch_size: int = 32, show_progress_bar: bool = False) -> dict[str, float]:
        """``{metric: value}`` of ``model`` (anything with the ``encode`` of a BTok model)."""
        if self.pairs_task is not None:
            from ..evaluation.scorers import EmbeddingScorer, evaluate

            result = evaluate(self.pairs_task, EmbeddingScorer(model, batch_size=batch_size))
            return {name: result[name] for name in self.metric_names()}
        from ..evaluation.mmeb_v2 import aggregate, evaluate_task

        results = [
            evaluate_task(
                task, model, batch_size=batch_size, num_frames=self.num_frames, show_progress_bar=show_progress_bar
            )
            for task in self.mmeb_tasks
        ]
        summary = aggregate(results)
        metrics = {"overall": summary["overall"], **summary["modalities"], **summary["meta_tasks"]}
        metrics.update({r["dataset"]: r["score"] for r in results})
        return metrics


def load_eval_source(
    spec: str,
    *,
    datasets: list[str] | None = None,
    modalities: list[str] | None = None,
    limit: int | None = None,
    num_frames: int = 8,
) -> EvalSource:
    """Open ``spec``: a JSONL evaluation file, an MMEB-V2 root (``datasets`` / ``modalities``
    select, default all 78), or one MMEB-V2 dataset folder (``ROOT/image-tasks/CIRR``).

    Raises:
        FileNotFoundError, ValueError, DataError: ``spec`` is none of these, or its data is bad.
    """
    from ..evaluation.mmeb_v2 import open_tasks

    if os.path.isfile(spec):
        from ..evaluation.task_files import load_task

        if datasets or modalities or limit is not None:
            raise ValueError(
                "--eval-datasets, --eval-modalities and --eval-limit apply to MMEB-V2, not to a JSONL file"
            )
        return EvalSource(os.path.basename(spec), pairs_task=load_task(spec))
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"--eval-data {spec!r}: no such file or folder")
    folder = os.path.abspath(spec)
    if os.path.isdir(os.path.join(folder, "queries.lance")):  # one dataset: ROOT/<modality>-tasks/<name>
        if datasets or modalities:
            raise ValueError(
                f"--eval-data {spec!r} is one MMEB-V2 dataset; --eval-datasets/--eval-modalities select from a root"
            )
        root, name = os.path.dirname(os.path.dirname(folder)), os.path.basename(folder)
        tasks = open_tasks(root, [name], None, limit)
    else:
        tasks = open_tasks(folder, datasets, modalities, limit)
    return EvalSource("MMEB-V2", mmeb_tasks=tasks, num_frames=num_frames)


def _metric_key(name: str) -> str:
    return name if name.startswith("eval_") else f"eval_{name}"


class RetrievalEvalCallback(TrainerCallback):
    """Evaluate every ``eval_steps`` steps; log the metrics; track the best checkpoint (see the module docstring).

    Args:
        source: what to evaluate on.
        eval_steps: evaluate after every this many optimizer steps.
        batch_size: inputs per forward pass while evaluating.
        load_best_model_at_end: when training ends, load the best checkpoint's weights into the model.
        show_progress_bar: a progress bar per MMEB-V2 dataset.
        log: prints one line per evaluation (rank 0).
    """

    def __init__(
        self,
        source: EvalSource,
        eval_steps: int,
        batch_size: int = 32,
        load_best_model_at_end: bool = False,
        show_progress_bar: bool = False,
        log=print,
    ):
        if isinstance(eval_steps, bool) or not isinstance(eval_steps, int) or eval_steps < 1:
            raise ValueError(f"eval_steps must be an int >= 1, got {eval_steps!r}")
        self.source, self.eval_steps, self.batch_size = source, eval_steps, batch_size
        self.load_best_model_at_end, self.show_progress_bar, self.log = load_best_model_at_end, show_progress_bar, log
        self._pending: tuple[int, dict[str, float]] | None = None

    def check(self, args) -> None:
        """Raise ValueError when the Trainer's best-model settings cannot work with this callback."""
        metric = args.metric_for_best_model
        if metric is None:
            if self.load_best_model_at_end:
                raise ValueError("load_best_model_at_end needs metric_for_best_model (--metric-for-best-model)")
            return
        names = [_metric_key(n) for n in self.source.metric_names()]
        if _metric_key(metric) not in names:
            raise ValueError(
                f"metric_for_best_model {metric!r} is not one of the evaluation's metrics: {', '.join(names)}"
            )
        if args.save_strategy != "steps" or args.save_steps % self.eval_steps:
            raise ValueError(
                "the best checkpoint is kept only if a checkpoint is saved at every evaluation: save every "
                f"multiple of {self.eval_steps} steps (--save-steps), got save_strategy={args.save_strategy!s}, "
                f"save_steps={args.save_steps}"
            )

    def on_train_begin(self, args, state, control, **kwargs):
        self.check(args)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_steps:
            return
        start = time.perf_counter()
        metrics = {_metric_key(k): float(v) for k, v in self._evaluate(model).items()}
        metrics["eval_seconds"] = round(time.perf_counter() - start, 3)
        metrics = _from_rank_zero(metrics)
        self._pending = (state.global_step, metrics)
        control.should_log = True  # the Trainer logs the losses at this step; on_log adds the metrics
        if args.metric_for_best_model is not None:
            self._track_best(args, state, metrics[_metric_key(args.metric_for_best_model)])
        if state.is_world_process_zero:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in list(metrics.items())[:6])
            self.log(f"step {state.global_step}: {self.source.name} {shown}")

    def _evaluate(self, model) -> dict[str, float]:
        from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

        if isinstance(model, FSDPModule) and not getattr(model, "_btok_fsdp_encode", False):
            # encode calls the decoder below the root module: run it through the root's
            # all-gather hooks as forward would.
            register_fsdp_forward_method(model, "encode")
            model._btok_fsdp_encode = True
        return self.source.evaluate(model, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar)

    @staticmethod
    def _track_best(args, state, value: float) -> None:
        """What the Trainer's own evaluation does with a new value of ``metric_for_best_model``."""
        better = (lambda a, b: a > b) if args.greater_is_better else (lambda a, b: a < b)
        if state.best_metric is None or better(value, state.best_metric):
            state.best_metric = value
            state.best_global_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is None or self._pending[0] != state.global_step or logs is None:
            return
        metrics = self._pending[1]
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)  # the entry the Trainer appended for this log call
        self._pending = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.load_best_model_at_end or state.best_model_checkpoint is None:
            return
        from torch.distributed.fsdp import FSDPModule

        from .checkpoints import load_checkpoint_weights

        model_class = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
        load_checkpoint_weights(model, state.best_model_checkpoint, model_class)
        if state.is_world_process_zero:
            self.log(
                f"loaded the best checkpoint {state.best_model_checkpoint} "
                f"({args.metric_for_best_model} {state.best_metric:.4f})"
            )


def _from_rank_zero(metrics: dict[str, float]) -> dict[str, float]:
    """Rank 0's metrics on every rank (all ranks then keep the same best checkpoint)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return metrics
    box = [metrics]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def eval_callback_from_args(args, save_steps: int) -> tuple[list, dict]:
    """``(callbacks, TrainingArguments overrides)`` for the ``--eval-*`` flags of ``python -m btok_model.train``
    (``save_steps``: the run's, resolved from its flags and preset; 0 = no intermediate checkpoints).

    Raises:
        SystemExit: exit status 2 after one ``error: ...`` line (:func:`btok_model.cli.fail`) for bad flags or
            evaluation data (before any model loads).
    """
    from ..cli import fail

    if args.eval_data is None:
        if args.metric_for_best_model or args.load_best_model_at_end:
            fail("--metric-for-best-model and --load-best-model-at-end need --eval-data")
        return [], {}
    try:
        source = load_eval_source(
            args.eval_data,
            datasets=args.eval_datasets,
            modalities=args.eval_modalities,
            limit=args.eval_limit,
        )
        callback = RetrievalEvalCallback(
            source, args.eval_steps, batch_size=args.eval_batch_size, load_best_model_at_end=args.load_best_model_at_end
        )
        overrides = {}
        if args.metric_for_best_model:
            overrides = {"metric_for_best_model": args.metric_for_best_model, "greater_is_better": True}
        check_args = _Settings(args.metric_for_best_model, "steps" if save_steps > 0 else "no", save_steps)
        callback.check(check_args)
    except (OSError, ValueError, ImportError) as err:
        fail(str(err))
    return [callback], overrides


class _Settings:
    """The TrainingArguments fields :meth:`RetrievalEvalCallback.check` reads, before they exist."""

    def __init__(self, metric_for_best_model, save_strategy, save_steps):
        self.metric_for_best_model, self.save_strategy, self.save_steps = (
            metric_for_best_model,
            save_strategy,
            save_steps,
        )
