"""Tiny BTok models, examples and gradient comparisons for the training tests."""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from btok_model.datasets import write_jsonl
from btok_model.training import train
from btok_model.training.recipe import Recipe, build_model
from tests.helpers.tiny import char_tokenizer, image, image_processor, tiny_backbone, tiny_vl_backbone, vl_tokenizer

# Lower-case texts the character tokenizer knows; varied lengths, some hard negatives,
# explicit, default and absent targets.
PAIRS = [
    ("what is a cat?", "a small furry animal", ["a red fruit"], ...),
    ("capital of france", "paris", [], "paris is the capital of france."),
    ("opposite of hot", "cold", ["warm", "hot tea"], None),
    ("2 + 2", "four", [], "it is 4"),
    ("a color of the sky", "blue", [], ...),
    ("the season after summer", "autumn, or fall", ["spring"], ...),
    ("a large body of salt water", "the ocean", [], "ocean"),
    ("what bees make", "honey", ["wax", "milk"], ...),
    ("frozen water", "ice", [], ...),
    ("the number after nine", "ten", [], "10, ten"),
    ("a baby dog", "a puppy", ["a kitten"], ...),
    ("where fish live", "in water", [], None),
]


def examples(n: int | None = None, negatives: bool = True) -> list[dict]:
    """Training example dicts (``...`` in PAIRS: no "target" key, the positive is the target)."""
    out = []
    for query, positive, negs, target in PAIRS[:n]:
        ex = {"query": query, "positive": positive}
        if negatives and negs:
            ex["negatives"] = list(negs)
        if target is not ...:
            ex["target"] = target
        out.append(ex)
    return out


GENERATION_SIDES = ("both", "positive", "query", "none", "positive", "both", "query", "positive")


def sided_examples() -> list[dict]:
    """8 examples with every generation side (``target_side``), queries of unequal lengths out of order."""
    out = []
    for i, (ex, side) in enumerate(zip(examples(8, negatives=False), GENERATION_SIDES, strict=True)):
        ex = dict(ex, target_side=side, query=ex["query"] + " x" * ((5 * i) % 7))
        if side in ("query", "none"):
            ex.pop("target", None)
        out.append(ex)
    return out


def tiny_recipe(btoks: bool = True, **overrides) -> Recipe:
    """A recipe for the tiny models: full fine-tuning, a few steps, no warmup, no clipping;
    ``overrides``: settings by name (:meth:`Recipe.from_values`); ``btoks=False``: the baseline's."""
    values = dict(
        lora_r=0,
        max_steps=4,
        batch_size=4,
        lr=1e-3,
        warmup_ratio=0.0,
        max_grad_norm=0.0,
        generative_weight=1.0,
        generative_steps=None,
        logging_steps=1,
        save_steps=0,
        seed=0,
    )
    return Recipe.from_values({**values, **overrides}, btoks=btoks)


def tiny_model(recipe: Recipe | None = None, family: str = "llama", seed: int = 0, btoks: bool | None = None):
    """A trainable tiny BTok model (or PooledEmbedder) built like the CLI builds one."""
    recipe = recipe or tiny_recipe()
    return build_model(tiny_backbone(family, seed), recipe, char_tokenizer(), btoks=btoks)


def one_step_recipe(batch_size: int, chunk_size: int | None = None, **settings) -> Recipe:
    """One SGD step with lr 1 (the update is minus the gradient), generative weight 2, GradCache
    chunks of ``chunk_size`` (None: plain batches); ``settings``: more recipe fields."""
    return tiny_recipe(
        max_steps=1,
        batch_size=batch_size,
        lr=1.0,
        lr_scheduler="constant",
        generative_weight=2.0,
        chunk_size=chunk_size,
        **settings,
    )


def case_data(kind: str) -> list[dict]:
    """8 examples; ``"one-target"``: only the first has a target (the second rank of two gets none)."""
    data = examples(8)
    if kind == "one-target":
        for i, example in enumerate(data):
            example["target"] = "a target" if i == 0 else None
    return data


def train_one_step(
    model,
    recipe: Recipe,
    data: list[dict],
    output_dir,
    *,
    distributed: bool | None = None,
    save: bool = False,
    **overrides,
):
    """``btok_model.training.train`` with SGD (a one-step recipe: :func:`one_step_recipe`);
    ``distributed`` (default ``recipe.fsdp``): the ranks talk over gloo. ``overrides`` go to
    ``train``. Returns the trainer."""
    distributed = recipe.fsdp if distributed is None else distributed
    backend = {"ddp_backend": "gloo"} if distributed else {}
    return train(model, data, recipe, output_dir, save=save, optim="sgd", **backend, **overrides)


class StopAt(TrainerCallback):
    """Interrupts a run after ``step`` steps, as a killed job would (after its checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# -- saved vision-language folders and image examples, for the command-line tests ------------------
VL_TRAIN = [
    {"query": "what is in the picture", "query_image": "img/0.png", "positive": "a red square"},
    {"query": "find the photo of a cat", "positive": "a cat", "positive_image": "img/1.png"},
    {"query": "a blue sky", "positive": "the sky is blue"},
    {"query": "what colour is it", "query_image": "img/2.png", "positive": "green", "negatives": ["red"]},
]
VL_EVAL = [
    {"query": "what is in the picture", "query_image": "img/0.png", "positive": "a red square"},
    {"query": "find the photo of a cat", "positive": "a cat", "positive_image": "img/1.png"},
    {"query": "a blue sky", "positive": "the sky is blue"},
]


def vl_folder(tmp_path, family: str):
    """A saved tiny VL backbone with its (character) tokenizer and image processor, as a user has
    one; the tokenizer's EOS is Qwen2-VL-Instruct's, ``<|im_end|>``."""
    folder = tmp_path / family
    tiny_vl_backbone(family).save_pretrained(folder)
    tokenizer = vl_tokenizer()
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.save_pretrained(folder)
    image_processor().save_pretrained(folder)
    return folder


def write_vl_data(tmp_path):
    """Three small PNG images and the JSONL training / evaluation files naming them."""
    (tmp_path / "img").mkdir(exist_ok=True)
    for i, (h, w) in enumerate([(28, 56), (56, 56), (56, 28)]):
        image(h, w, i).save(tmp_path / "img" / f"{i}.png")
    write_jsonl(tmp_path / "train.jsonl", VL_TRAIN)
    write_jsonl(tmp_path / "eval.jsonl", VL_EVAL)
    return tmp_path / "train.jsonl", tmp_path / "eval.jsonl"


def rank_batches(sampler, batch_size: int, num_processes: int) -> list[list[list[int]]]:
    """Each rank's batches of ``sampler``'s indices as the Trainer's accelerate-prepared DataLoader deals them."""
    from accelerate.data_loader import prepare_data_loader

    dataset = list(range(sum(sampler.sizes)))
    out = []
    for rank in range(num_processes):
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler)
        prepared = prepare_data_loader(loader, num_processes=num_processes, process_index=rank, put_on_device=False)
        out.append([batch.tolist() for batch in prepared])
    return out
