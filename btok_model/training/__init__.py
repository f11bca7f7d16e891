"""Training BTok embedders on the transformers Trainer.

* :mod:`.mixed_dataset` -- training sources (JSONL files, MMEB-train subsets; validated, errors naming
  file and line or row) mixed with weights.
* :mod:`.sampler` -- the order: weighted shares shuffled, or single-source blocks.
* :mod:`.schedule` -- the generative-loss weight per step.
* :mod:`.collator` -- batches for the Trainer: schedule-aware, split into GradCache chunks.
* :mod:`.gradcache` -- the chunked step with the full batch's loss and gradients.
* :mod:`.trainer` -- :class:`BTokTrainer` (losses logged apart, bad rows, resume, DDP, FSDP).
* :mod:`.checkpoints` -- what a BTok checkpoint holds; writing and reading it (FSDP included).
* :mod:`.bad_rows` -- training rows that cannot be decoded: replaced, counted, named; or a stop.
* :mod:`.eval_callback` -- retrieval evaluation during training, the best checkpoint kept.
* :mod:`.presets` -- the authors' recipes.
* :mod:`.recipe` -- the settings with the authors' defaults; :func:`build_model`, :func:`train`.
"""

from .checkpoints import load_checkpoint_weights
from .collator import ChunkedBatch, GradCacheChunk, TrainingCollator
from .gradcache import grad_cache_step
from .mixed_dataset import (
    DataSource,
    MixedDataset,
    load_examples,
    parse_data_spec,
    parse_target_side,
    with_target_sides,
)
from .recipe import Recipe, build_model, lora_config, train, training_arguments
from .sampler import MixtureSampler, SourceBlockSampler, check_block_size
from .schedule import GenerativeSchedule
from .trainer import BTokTrainer

__all__ = [
    "BTokTrainer",
    "ChunkedBatch",
    "DataSource",
    "GenerativeSchedule",
    "GradCacheChunk",
    "MixedDataset",
    "MixtureSampler",
    "Recipe",
    "SourceBlockSampler",
    "TrainingCollator",
    "build_model",
    "check_block_size",
    "grad_cache_step",
    "load_checkpoint_weights",
    "load_examples",
    "lora_config",
    "parse_data_spec",
    "parse_target_side",
    "train",
    "training_arguments",
    "with_target_sides",
]
