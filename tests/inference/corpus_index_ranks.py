"""A driver ``test_corpus_index.py`` runs twice: as one process and as ``torchrun --nproc-per-node 2``.

    python -m tests.inference.corpus_index_ranks OUT MODEL EVAL_PAIRS MINE_PAIRS CORPUS_LANCE

It joins the group once (gloo) and runs ``evaluate`` and ``mine`` with ``--corpus-index``,
exact and ``--ann``, each writing under ``OUT`` (rank 0 writes). Blocks are small, so each rank
holds several blocks of the pool (positives embedded, the output's rows read).
"""

import json
import os
import sys

import torch


def main(out: str, model: str, eval_pairs: str, mine_pairs: str, corpus_index: str) -> None:
    from btok_model.evaluate import main as evaluate_main
    from btok_model.inference import distributed
    from btok_model.mine import main as mine_main

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo")  # the driver's own group: the commands join it, not end it
    quiet = ["--no-progress-bar", "--device", "cpu", "--batch-size", "5", "--attn-implementation", "sdpa"]
    summaries = {}
    for name, more in (("exact", []), ("ann", ["--ann", "--ann-candidates", "40"])):
        evaluate_main(
            ["--model", model, "--data", eval_pairs, "--corpus-index", corpus_index, "--encode-block", "16"]
            + ["--output", f"{out}/evaluate_{name}.json", *more, *quiet]
        )
        summaries[name] = mine_main(
            [
                "--model",
                model,
                "--data",
                mine_pairs,
                "--corpus-index",
                corpus_index,
                "--output",
                f"{out}/mined_{name}.jsonl",
            ]
            + ["--negatives", "3", "--skip-top", "1", "--corpus-block", "32", "--query-block", "8", *more, *quiet]
        )
    if distributed.is_main():
        with open(os.path.join(out, "mine_summaries.json"), "w") as f:
            json.dump(summaries, f)
        with open(os.path.join(out, "world.txt"), "w") as f:
            f.write(str(distributed.rank_and_world()[1]))


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
