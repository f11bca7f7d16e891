"""The authors' training recipes as presets of ``python -m btok_model.train --preset NAME``.

Every value is read from the authors' released configs (github ``siryuson/BottleneckTokens``,
package ``vlm2emb``); each entry names the file and key it comes from. A preset fills the
flags the user did not give: an explicit flag > the preset > the :class:`~.recipe.Recipe`
default. Keys are the settings' field names (:func:`~.recipe.recipe_settings`: the fields of
:class:`~btok_model.embedder.config.BTokConfig` and :class:`~.recipe.Recipe`, also the flags'
names), ``model`` and ``no_btoks``.

Where btok and the authors' code differ on these settings (the table in ``docs/authors-preset.md``):

* ``btok_init="checkpoint"``: the BToks keep the checkpoint's rows for their ids, as the
  authors' injector leaves them when the embedding matrix has spare rows (Qwen2-VL-2B's
  does); on a backbone without spare rows btok raises where the authors would resize and copy
  EOS (``--btok-init eos``) (:func:`~btok_model.embedder.tokens.init_btok_rows`).
* ``lora_modules``: the authors' list, applied by btok to the language model only; on
  Qwen2-VL this is the same set of layers (q/k/v/o/down_proj of the decoder; the vision
  tower's layers are named ``qkv``, ``proj``, ``fc1``, ``fc2``), on Qwen2.5-VL the authors'
  list would also reach the vision tower's ``down_proj``, btok's does not.
* not carried over: the optimizer implementation (``optim: adamw_torch``; transformers 5's
  default ``adamw_torch_fused`` is the same AdamW), ``dataloader_drop_last``, evaluation
  during training, ``save_total_limit`` (unset there: every checkpoint kept; btok keeps 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..datasets.catalog import AUTHORS_V1_MIXTURE, VLM2VEC_MIXTURE, Mixture

__all__ = ["PRESETS", "Preset"]

AUTHORS = "siryuson/BottleneckTokens"
# The LoRA target list of configs/peft/lora_default.yaml (names of several model families).
AUTHORS_LORA_MODULES = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "k_proj", "q_proj", "out_proj", "v_proj"]


@dataclass(frozen=True)
class Preset:
    """A named set of train-command values, each with where it comes from.

    Attributes:
        name: the ``--preset`` name.
        description: one line.
        settings: ``{argument name: (value, source)}``; the source names the authors' file and key.
        dataset: the authors' training-data config (weights and generation sides per source).
        mixture: that config as a table: the weights and sides ``--train-data`` gives the
            authors' sources under this preset.
    """

    name: str
    description: str
    settings: dict[str, tuple[object, str]]
    dataset: str
    mixture: Mixture

    @property
    def values(self) -> dict[str, object]:
        return {name: value for name, (value, _) in self.settings.items()}


_BASE = "configs/training/btoks_base.yaml"
_LORA = "configs/peft/lora_default.yaml"
_PRESET = "configs/presets/*_qwen2vl_2b*.yaml"


def _shared(base: str) -> dict[str, tuple[object, str]]:
    """The values both presets share (the optimiser, LoRA, batch, precision, pixel limits), read
    from their training-arguments file ``base``."""
    return {
        "model": ("Qwen/Qwen2-VL-2B-Instruct", "configs/models/*_qwen2vl_2b*.yaml: backbone.model_name_or_path"),
        "temperature": (0.02, f"{base}: temperature"),
        "lora_r": (16, f"{_LORA}: r"),
        "lora_alpha": (32.0, f"{_LORA}: alpha"),
        "lora_dropout": (0.05, f"{_LORA}: dropout"),
        "lora_dora": (True, f"{_LORA}: use_dora"),
        "lora_init": ("gaussian", "src/vlm2emb/training/train.py: LoraConfig(init_lora_weights=... 'gaussian')"),
        "lora_modules": (AUTHORS_LORA_MODULES, f"{_LORA}: target_modules"),
        "lora_layers": (None, f"{_LORA}: (every layer)"),
        "max_steps": (5000, f"{base}: max_steps"),
        "batch_size": (128, f"{_PRESET}: train.args.per_device_train_batch_size"),
        "chunk_size": (8, f"{_PRESET}: train.args.gc_chunk_size"),
        "lr": (5e-5, f"{base}: learning_rate"),
        "lr_scheduler": ("linear", f"{base}: lr_scheduler_type"),
        "weight_decay": (0.01, f"{base}: weight_decay"),
        "warmup_steps": (100, f"{base}: warmup_steps"),
        "max_grad_norm": (1.0, f"{base}: max_grad_norm"),
        "bf16": (True, f"{base}: bf16"),
        "seed": (42, f"{base}: seed"),
        "logging_steps": (1, f"{base}: logging_steps"),
        "save_steps": (50, f"{base}: save_steps"),
        "image_min_pixels": (3136, f"{_PRESET}: processor.image_min_pixels"),
        "image_max_pixels": (1003520, f"{_PRESET}: processor.image_max_pixels"),
        "video_min_pixels": (3136, f"{_PRESET}: processor.video_min_pixels"),
        "video_max_pixels": (602112, f"{_PRESET}: processor.video_max_pixels"),
        "source_block_size": (512, f"{base}: interleave_batch_size"),
        "save_adapters": (
            True,
            "src/vlm2emb/training/train.py: the PEFT model saved with its adapters; evaluated unmerged",
        ),
        "source_block_mode": (
            "authors",
            "src/vlm2emb/training/samplers/batch_interleave.py: _apply_stride_interleave (per_device_batch_size x "
            "world_size windows), then accelerate's per-device batches dealt to the ranks in turn",
        ),
        "hard_negatives": (
            False,
            "src/vlm2emb/training/trainers/{btoks,vlm2vec}_trainer.py: GradCache over the query and positive groups only",
        ),
    }


BTOKS_QWEN2VL_2B_V1 = Preset(
    name="btoks-qwen2vl-2b-v1",
    description="BToks on Qwen2-VL-2B, the paper's recipe (configs/presets/btoks_qwen2vl_2b_v1.yaml)",
    settings={
        **_shared(_BASE),
        "no_btoks": (False, "configs/models/btoks_qwen2vl_2b_v1.yaml: type BToks"),
        "num_btoks": (4, "configs/models/btoks_qwen2vl_2b_v1.yaml: injector.num_tokens"),
        "pooling": ("mean", "src/vlm2emb/modules/btoks.py: BToksPooling (mean of the BTok states)"),
        "generative_weight": (5.0, f"{_BASE}: generation_loss_weight"),
        "generative_steps": (2000, f"{_BASE}: generation_loss_duration"),
        "generative_normalization": (
            "authors",
            "src/vlm2emb/training/trainers/btoks_trainer.py: forward_backward_fn (gen_loss x G_chunk / B_local per "
            "group and chunk; chunks after the aligned sort by query length, gc_sort_by_length default True)",
        ),
        "btok_init": (
            "checkpoint",
            "src/vlm2emb/modules/btoks.py: BToksTokenInjector.on_processor (copies EOS only when the tokenizer "
            "outgrows the embedding matrix; Qwen2-VL-2B's 151,936 rows hold its 151,657 ids and the 4 BToks)",
        ),
    },
    dataset="configs/datasets/btoks_mmeb_train.yaml (mmeb_train.yaml's weights, per-subset ntp_side)",
    mixture=AUTHORS_V1_MIXTURE,
)

VLM2VEC_QWEN2VL_2B = Preset(
    name="vlm2vec-qwen2vl-2b",
    description="the VLM2Vec baseline: last-token pooling on Qwen2-VL-2B, no BToks "
    "(configs/presets/vlm2vec_qwen2vl_2b.yaml)",
    settings={
        **_shared("configs/training/vlm2vec_base.yaml"),
        "source_block_size": (
            512,
            (
                "configs/training/vlm2vec_base.yaml: interleave_batch_size (the preset's header comment says 64; "
                "its args inherit 512)"
            ),
        ),
        "no_btoks": (True, "configs/models/vlm2vec_qwen2vl_2b.yaml: type VLM2Emb (no injector)"),
        "pooling": ("last", "configs/models/vlm2vec_qwen2vl_2b.yaml: LastTokenPooling"),
        "generative_weight": (0.0, "configs/training/vlm2vec_base.yaml: (no generation loss)"),
        "generative_steps": (None, "configs/training/vlm2vec_base.yaml: (no generation loss)"),
    },
    dataset="configs/datasets/mmeb_train_optimized.yaml (other weights than the BToks preset, no ntp_side)",
    mixture=VLM2VEC_MIXTURE,
)

PRESETS = {preset.name: preset for preset in (BTOKS_QWEN2VL_2B_V1, VLM2VEC_QWEN2VL_2B)}
