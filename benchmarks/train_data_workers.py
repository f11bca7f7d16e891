"""Training step time with images, by number of data-loader workers (CPU, tiny Qwen2-VL).

    PYTHONPATH=. python benchmarks/train_data_workers.py --workers 0 2 --steps 14

Writes ``--images`` random JPEGs of ``--size`` pixels (decoded and resized by the real Qwen2-VL
image processor, as MMEB-train's photos are), a JSONL file naming them, and a saved tiny Qwen2-VL
folder; then trains ``--steps`` steps per setting and prints, per setting, the median and the
20th/80th percentiles of the time between consecutive optimizer steps (data loading included),
the first ``--warmup`` steps left out, with the 1-minute load average before and after (the
machines this runs on are shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
from transformers import TrainerCallback


class _StepClock(TrainerCallback):
    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def _write_data(root: str, images: int, size: tuple[int, int]) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    rows = []
    for i in range(images):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, "img", f"{i}.jpg"), quality=90)
        rows.append({"query": f"picture {i}", "query_image": f"img/{i}.jpg", "positive": f"caption number {i}"})
    path = os.path.join(root, "train.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def _step_times(folder: str, data: str, workers: int, steps: int, batch_size: int, out: str) -> list[float]:
    from btok_model.training.mixed_dataset import DataSource, MixedDataset
    from btok_model.training.recipe import Recipe, build_model, train

    recipe = Recipe.from_values(
        dict(
            lora_r=0,
            max_steps=steps,
            batch_size=batch_size,
            lr=1e-4,
            warmup_ratio=0.0,
            generative_weight=1.0,
            generative_steps=None,
            logging_steps=1000,
            save_steps=0,
            seed=0,
            dataloader_num_workers=workers,
        )
    )
    model = build_model(folder, recipe)
    dataset = MixedDataset([DataSource(data)])
    clock = _StepClock()
    train(model, dataset, recipe, out, save=False, callbacks=[clock])
    return list(np.diff(clock.ends))


def main(argv: list[str] | None = None) -> dict[int, list[float] | str]:
    """Prints a line per setting and returns ``{workers: step times in s (warm-up left out),
    or why the setting was refused}``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--steps", type=int, default=14)
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the statistics")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    args = p.parse_args(argv)
    if args.steps <= args.warmup + 1:
        p.error(f"--steps must exceed --warmup + 1 (the statistics need 2 steps), got {args.steps} and {args.warmup}")

    import torch

    from tests.helpers.tiny import image_processor, tiny_vl_backbone, vl_tokenizer

    results: dict[int, list[float] | str] = {}
    with tempfile.TemporaryDirectory() as root:
        folder = os.path.join(root, "qwen2_vl")
        tiny_vl_backbone("qwen2_vl").save_pretrained(folder)
        tokenizer = vl_tokenizer()
        tokenizer.eos_token = "<|im_end|>"
        tokenizer.save_pretrained(folder)
        image_processor().save_pretrained(folder)
        data = _write_data(root, args.images, tuple(args.size))
        print(
            f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
            f"images {args.size[0]}x{args.size[1]} JPEG"
        )
        for workers in args.workers:
            load = os.getloadavg()[0]
            try:
                times = _step_times(
                    folder, data, workers, args.steps, args.batch_size, os.path.join(root, f"w{workers}")
                )
            except ValueError as err:
                print(f"workers {workers}: refused ({err})")
                results[workers] = f"refused ({err})"
                continue
            kept = sorted(times[args.warmup - 1 :])
            results[workers] = kept
            q = statistics.quantiles(kept, n=5)
            print(
                f"workers {workers}: step {statistics.median(kept) * 1e3:.0f} ms median "
                f"(p20 {q[0] * 1e3:.0f}, p80 {q[3] * 1e3:.0f}; {len(kept)} steps), "
                f"load {load:.1f} -> {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    return results


if __name__ == "__main__":
    import torch

    torch.set_num_threads(max(os.cpu_count() or 1, 1))
    main()
