"""A driver the torchrun tests run twice: as one process and as ``torchrun --nproc-per-node 2``.

    python -m tests.helpers.two_ranks OUT MODEL PAIRS CORPUS LISTS MINE_DATA MMEB_ROOT
    torchrun --nproc-per-node 2 -m tests.helpers.two_ranks OUT ...

It joins the group once (gloo) and runs the command lines in it, each writing under ``OUT``
(and ``scoring.pt``: the blocked scorer's top-k and rank counts of seeded vectors, combined):
``evaluate`` on pairs with a corpus and on candidate lists (cosine and MaxSim at two
Matryoshka sizes), ``mine`` on training pairs, and ``evaluate --mmeb-v2`` on the MMEB-V2
fixture with a tiny random Qwen2-VL BTok model (built the same way on every rank, seeded).
Blocks are small so that each rank gets several.
"""

import json
import os
import sys

import torch


def main(out: str, model: str, pairs: str, corpus: str, lists: str, mine_data: str, mmeb_root: str) -> None:
    import btok_model.evaluate as evaluate_cli
    from btok_model.evaluation import EmbeddingScorer
    from btok_model.inference import distributed
    from btok_model.mine import main as mine_main
    from tests.helpers.mmeb_v2_data import FIXTURE_DATASETS
    from tests.helpers.tiny import tiny_vl_btok

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo")  # the driver's own group: the commands join it, not end it
    quiet = ["--no-progress-bar", "--device", "cpu", "--batch-size", "3"]
    evaluate_cli.main(
        ["--model", model, "--data", pairs, "--corpus", corpus, "--encode-block", "8", "--output", f"{out}/pairs.json"]
        + quiet
    )
    evaluate_cli.main(
        ["--model", model, "--data", lists, "--encode-block", "5", "--output", f"{out}/lists.json"] + quiet
    )
    evaluate_cli.main(
        ["--model", model, "--data", lists, "--encode-block", "5", "--similarity", "maxsim", "--dims", "16", "full"]
        + ["--output", f"{out}/lists_maxsim.json"]
        + quiet
    )
    summary = mine_main(
        ["--model", model, "--data", mine_data, "--corpus", corpus, "--output", f"{out}/mined.jsonl"]
        + ["--negatives", "3", "--skip-top", "1", "--corpus-block", "7", "--query-block", "4"]
        + quiet
    )
    torch.manual_seed(0)
    vl = tiny_vl_btok()
    evaluate_cli.load_scorer = lambda args: EmbeddingScorer(vl, batch_size=args.batch_size)
    evaluate_cli.main(
        ["--model", "tiny-qwen2-vl", "--mmeb-v2", mmeb_root, "--datasets", *FIXTURE_DATASETS]
        + ["--output-dir", f"{out}/mmeb", "--batch-size", "3", "--encode-block", "2", "--no-progress-bar"]
    )
    scoring = _scoring()
    scoring["one_block"] = _one_block(model)
    if not distributed.is_main():
        torch.save(scoring["one_block"], os.path.join(out, "one_block_rank1.pt"))
        return
    torch.save(scoring, os.path.join(out, "scoring.pt"))
    with open(os.path.join(out, "mine_summary.json"), "w") as f:
        json.dump(summary, f)
    with open(os.path.join(out, "world.txt"), "w") as f:
        f.write(str(distributed.rank_and_world()[1]))


def _scoring() -> dict:
    """``topk`` and ``count_ranks`` of seeded vectors (integers / 4: many exact ties) against
    candidates sharded as the ranks hold them (blocks of 4), combined across ranks."""
    from btok_model.embedder.encode import EncodedShard, rank_and_world, shard_blocks
    from btok_model.inference.scoring import count_ranks, topk

    gen = torch.Generator().manual_seed(0)
    q, c = (torch.randint(-2, 3, (n, 3, 5), generator=gen).float() / 4 for n in (10, 27))
    rank, world = rank_and_world()
    run = shard_blocks(7, rank, world)  # 27 rows: 7 blocks of 4
    lo, hi = min(4 * run.start, 27), min(4 * run.stop, 27)
    lists = [None if i % 2 else list(range(i, 27, 3)) for i in range(10)]
    relevant = torch.tensor([[i if i % 2 else i + 3, -1] for i in range(10)])
    out = {"queries": q, "candidates": c, "lists": lists, "relevant": relevant}
    for similarity in ("cosine", "maxsim"):
        qq, cc = (q, c) if similarity == "maxsim" else (q[:, 0], c[:, 0])
        shard = EncodedShard(cc[lo:hi], lo, hi, 27, 4)
        counts = count_ranks(qq, shard, relevant, lists=lists, similarity=similarity, candidate_block=3, query_block=4)
        top = topk(qq, shard, 6, similarity=similarity, candidate_block=3)
        out[similarity] = {"counts": vars(counts), "values": top.values, "indices": top.indices}
    return out


def _one_block(path: str) -> dict:
    """Fewer blocks than ranks: rank 1 holds no rows, and still takes part in every collective."""
    from btok_model.embedder.btok import BTokModel
    from btok_model.embedder.encode import encode
    from btok_model.inference.scoring import count_ranks, topk

    model = BTokModel.from_pretrained(path, dtype=torch.float32)
    texts = ["one", "two words", "three small words"]
    queries = encode(model, texts, block_size=4, shard=True)  # gathered from rank 0 alone
    shard = encode(model, texts, block_size=4, shard=True, gather=False)
    counts = count_ranks(queries, shard, torch.tensor([[2], [0], [1]]), candidate_block=2)
    top = topk(queries, shard, 2)
    return {"queries": queries, "rows": (shard.start, shard.stop), "greater": counts.greater, "indices": top.indices}


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
