"""``python -m btok_model.mine``: hard negatives for training pairs, mined with a first model.

    python -m btok_model.mine --model runs/smol --data pairs.jsonl --corpus corpus.jsonl \\
        --output mined.jsonl --negatives 4 --skip-top 1 --max-score-margin 0.95
    python -m btok_model.mine --baseline last-token --model smollm2 --data pairs.jsonl --output mined.jsonl
    torchrun --nproc-per-node 2 -m btok_model.mine --model runs/smol --data pairs.jsonl --output mined.jsonl

Each line of ``--data`` (training JSONL) is written to ``--output`` with up to ``--negatives``
mined negatives added to its ``negatives``: the candidates the model ranks highest for its query
among the file's distinct positives and the ``--corpus`` lines (or an ``embed`` output's rows,
``--corpus-index``), less the line's positives, query and own negatives, the ``--skip-top``
highest-ranked, and those above the false-negative guard (``--max-score-margin``). Embedding goes
through the encode engine (:mod:`btok_model.embedder.encode`), scoring through the blocked scorer
(:mod:`btok_model.inference.scoring`), so no ``[queries, pool]`` score matrix is held; under
``torchrun`` the output is what one process writes. The library calls are
:func:`mine_hard_negatives` and :func:`mine_file`. The rules in full: docs/mining.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass

import torch

from . import cli
from .cli import fail
from .datasets.jsonl import read_jsonl
from .datasets.schema import FLAT_IMAGE_KEYS, NEGATIVES, POSITIVE, QUERY, example_input
from .embedder import encode as engine
from .evaluation.task_files import ON_BAD_ROW, input_key, load_corpus
from .inference import distributed
from .inference.scoring import RunningTopK, TopK, merge_topk, score_blocks

__all__ = ["MinedNegatives", "main", "mine_file", "mine_hard_negatives", "parser"]


@dataclass
class MinedNegatives:
    """What :func:`mine_hard_negatives` found, one row per (query, positive) line.

    Attributes:
        pool: the candidates (distinct positives in order of first appearance, then the corpus
            entries not among them).
        negatives: long ``[L, n]``, pool indices of each line's negatives, best first; ``-1``
            where fewer than ``n`` qualified.
        negative_scores: fp32 ``[L, n]``, their scores (``-inf`` at ``-1``).
        positive_scores: fp32 ``[L]``, each line's query-positive score.
        positive_rank: long ``[L]``, candidates (excluded ones aside) scoring above the positive:
            0 where the model ranks the positive first.
        guarded: long ``[L]``, candidates (excluded ones aside) the false-negative guard dropped.
        corpus_index: with a corpus index, what the pool took from it
            (:meth:`~btok_model.inference.pools.IndexPool.describe`), else None.
    """

    pool: list
    negatives: torch.Tensor
    negative_scores: torch.Tensor
    positive_scores: torch.Tensor
    positive_rank: torch.Tensor
    guarded: torch.Tensor
    corpus_index: dict | None = None


_PARAMETERS = ("num_negatives", "skip_top", "max_score_margin", "query_block", "corpus_block")
_FLAGS = dict(zip(_PARAMETERS, ("--negatives", "--skip-top", "--max-score-margin", "--query-block", "--corpus-block")))


def _check_options(values: dict, names: dict | None = None) -> None:
    """Raise ``ValueError`` naming the first bad option of ``values`` (keys: :data:`_PARAMETERS`);
    ``names`` says what to call each (the command line's flags)."""
    names = names or {}
    for key in _PARAMETERS:
        value, name = values[key], names.get(key, key)
        if key == "max_score_margin":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
            continue
        low = 0 if key == "skip_top" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _excluded(queries: list, exclude: list | None, index: dict, positive_index: list[int]) -> torch.Tensor:
    """long ``[L, E]``: per line the pool indices it may not take (-1 pads)."""
    by_query: dict = {}
    for query, pos in zip(queries, positive_index):
        by_query.setdefault(input_key(query), set()).add(pos)
    rows = []
    for i, query in enumerate(queries):
        row = set(by_query[input_key(query)])
        extra = [query, *(exclude[i] if exclude is not None else [])]
        row.update(index[input_key(item)] for item in extra if input_key(item) in index)
        rows.append(sorted(row))
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _mask_block(scores: torch.Tensor, excluded: torch.Tensor, lo: int) -> torch.Tensor:
    """``scores`` (fp32 ``[r, C]`` of candidates ``lo`` ..) with each row's excluded candidates at -inf."""
    width = scores.shape[1]
    inside = (excluded >= lo) & (excluded < lo + width)
    columns = torch.where(inside, excluded - lo, torch.full_like(excluded, width))  # outside: a spare column
    padded = torch.cat([scores, scores.new_zeros(scores.shape[0], 1)], dim=1)
    return padded.scatter(1, columns, float("-inf"))[:, :width]


def mine_hard_negatives(
    model,
    queries: list,
    positives: list,
    corpus: list | tuple = (),
    *,
    num_negatives: int = 4,
    skip_top: int = 0,
    max_score_margin: float = 0.95,
    exclude: list[list] | None = None,
    batch_size: int = 32,
    query_block: int = 1024,
    corpus_block: int = 16384,
    show_progress_bar: bool = False,
    device: torch.device | str | None = None,
    shard: bool = False,
    corpus_index=None,
) -> MinedNegatives:
    """Each (query, positive) line's hardest negatives in the pool of positives and corpus.

    The rules (pool, exclusions, ``skip_top``, the false-negative guard, ties) are
    docs/mining.md's; scores are cosine similarities of the encode engine's embeddings
    (:mod:`btok_model.embedder.encode`), counted and ranked by the blocked scorer
    (:mod:`btok_model.inference.scoring`). With ``shard`` under ``torchrun`` every rank calls
    this with the same arguments: each encodes its share of the pool's blocks and keeps it, the
    queries are gathered, and the per-rank counts and top lists combine to what one process
    finds.

    Args:
        model: an :class:`~btok_model.embedder.base.Embedder` (:class:`~btok_model.BTokModel`,
            :class:`~btok_model.embedder.pooled.PooledEmbedder`), or another encoder with
            ``encode(inputs, batch_size=, show_progress_bar=)`` returning fp32 ``[N, H]``
            L2-normalised rows.
        queries, positives: L inputs each (str, or ``{"text", "image"}`` for a multimodal model).
        corpus: more candidates (inputs).
        num_negatives: negatives per line (n >= 1).
        skip_top: top-ranked candidates skipped per line (>= 0).
        max_score_margin: the false-negative guard's margin, in (0, 1].
        exclude: per line, inputs it may not take (e.g. its existing negatives).
        batch_size: inputs per forward pass.
        query_block: lines scored at once.
        corpus_block: pool inputs per encode block (the unit each rank takes) and per score block.
        show_progress_bar: tqdm bars (rows/s) while embedding, on rank 0.
        device: where scores are computed (default: the model's device, else the CPU).
        shard: split the work across the ranks of ``torch.distributed``; False: this process
            does all of it, with no collective.
        corpus_index: a :class:`~btok_model.inference.pools.PoolOptions`: the rows of that
            ``embed`` output (same model, text column kept) join the pool after ``corpus``,
            scored exactly from their stored vectors, or with ``ann`` through its ANN index.

    Returns:
        :class:`MinedNegatives` (the same on every rank).
    """
    _check_options(
        {
            "num_negatives": num_negatives,
            "skip_top": skip_top,
            "max_score_margin": max_score_margin,
            "query_block": query_block,
            "corpus_block": corpus_block,
        }
    )
    if len(queries) != len(positives) or not queries:
        raise ValueError(
            f"queries and positives must be non-empty and as long, got {len(queries)} and {len(positives)}"
        )
    if exclude is not None and len(exclude) != len(queries):
        raise ValueError(f"exclude must hold one list per line ({len(queries)}), got {len(exclude)}")
    device = torch.device(device or getattr(model, "device", None) or "cpu")
    pool, index = _pool(positives, corpus)
    extra = None
    if corpus_index is not None:
        from .inference.pools import IndexPool, open_pool_index

        corpus_index.check(1, "--ann-candidates")
        extra = IndexPool(open_pool_index(corpus_index), corpus_index, index, need_texts=True)
        extra.check_model(model)  # before anything is embedded
        pool, index = pool + extra.texts, extra.keys
    positive_index = torch.tensor([index[input_key(p)] for p in positives], dtype=torch.long)
    excluded = _excluded(queries, exclude, index, positive_index.tolist()).to(device)

    settings = {"batch_size": batch_size, "block_size": corpus_block, "progress": show_progress_bar}
    distinct_queries = list({input_key(q): q for q in queries}.values())
    query_rows = {input_key(q): i for i, q in enumerate(distinct_queries)}
    query_emb = engine.encode(model, distinct_queries, shard=shard, gather=True, desc="queries", **settings)
    query_emb = query_emb[torch.tensor([query_rows[input_key(q)] for q in queries])].to(device)
    # Without shard: every block here, as the one shard (0 of 1), and nothing to combine.
    combine = shard and distributed.is_distributed()
    if extra is None:
        shard = engine.encode(model, pool, shard=True if shard else (0, 1), gather=False, desc="pool", **settings)
    elif not corpus_index.ann:  # the whole pool, the output's rows read on the same block grid

        def encode_rows(lo, hi):
            return engine.encode(model, pool[lo:hi], desc="pool", **settings)

        shard = extra.shard(encode_rows, corpus_block, shard=shard)
    else:  # the head here; the output's rows come from its ANN index below
        head = pool[: extra.head]
        shard = engine.encode(model, head, shard=True if shard else (0, 1), gather=False, desc="pool", **settings)

    # Each line's positive score, from the rank holding the positive (the same product as one process).
    held = (positive_index >= shard.start) & (positive_index < shard.stop)
    local = shard.embeddings[(positive_index - shard.start).clamp(0, max(len(shard.rows) - 1, 0))[held]]
    positive_scores = torch.full((len(queries),), -math.inf)
    positive_scores[held] = (query_emb[held.to(device)].cpu() * local).sum(-1)
    positive_scores = (distributed.all_reduce(positive_scores, "max") if combine else positive_scores).to(device)
    threshold = positive_scores - (1 - max_score_margin) * positive_scores.abs()

    lines = len(queries)
    skipped = RunningTopK(lines, skip_top, device)
    kept = RunningTopK(lines, skip_top + num_negatives, device)
    positive_rank = torch.zeros(lines, dtype=torch.long, device=device)
    guarded = torch.zeros(lines, dtype=torch.long, device=device)
    blocks = score_blocks(query_emb, shard, query_block=query_block, candidate_block=corpus_block, device=device)
    for rows, lo, scores in blocks:
        scores = _mask_block(scores, excluded[rows], lo)
        positive_rank[rows] += (scores > positive_scores[rows, None]).sum(1)
        over = scores > threshold[rows, None]
        guarded[rows] += over.sum(1)
        skipped.update(rows, scores, lo)
        kept.update(rows, scores.masked_fill(over, float("-inf")), lo)
    positive_rank, guarded, skipped, kept = (
        positive_rank.cpu(),
        guarded.cpu(),
        _cpu(skipped.result()),
        _cpu(kept.result()),
    )
    if combine:
        positive_rank = distributed.all_reduce(positive_rank, "sum")
        guarded = distributed.all_reduce(guarded, "sum")
        skipped = merge_topk(distributed.all_gather_topk(skipped), skip_top)
        kept = merge_topk(distributed.all_gather_topk(kept), skip_top + num_negatives)
    if extra is not None and corpus_index.ann:  # every rank gets every line's hits
        hits = extra.ann(query_emb.cpu(), shard=combine)
        values = _mask_hits(hits, excluded.cpu())
        positive_rank = positive_rank + (values > positive_scores.cpu()[:, None]).sum(1)
        over = values > threshold.cpu()[:, None]
        guarded = guarded + over.sum(1)
        skipped = merge_topk([skipped, TopK(values, hits.indices)], skip_top)
        kept = merge_topk([kept, TopK(values.masked_fill(over, -math.inf), hits.indices)], skip_top + num_negatives)

    # The kept list minus the skipped ranks: at most skip_top entries go, so n remain where n qualify.
    drop = (kept.indices[:, :, None] == skipped.indices[:, None, :]).any(-1) | (kept.indices < 0)
    first = torch.sort(drop.to(torch.uint8), dim=1, stable=True).indices[:, :num_negatives]
    negatives = torch.where(drop.gather(1, first), -1, kept.indices.gather(1, first))
    negative_scores = kept.values.gather(1, first).masked_fill(negatives < 0, float("-inf"))
    described = None if extra is None else extra.describe()
    return MinedNegatives(pool, negatives, negative_scores, positive_scores.cpu(), positive_rank, guarded, described)


def _mask_hits(hits: TopK, excluded: torch.Tensor) -> torch.Tensor:
    """fp32 ``[L, n]``: the hits' scores, ``-inf`` at a hit the line may not take (``excluded``:
    long ``[L, E]``, -1 pads) or at an empty hit."""
    taken = (hits.indices[:, :, None] == excluded[:, None, :]).any(-1) | (hits.indices < 0)
    return hits.values.masked_fill(taken, -math.inf)


def _pool(positives: list, corpus) -> tuple[list, dict]:
    """The candidates (distinct positives in order, then the corpus entries not among them) and
    ``{input_key: pool index}``."""
    index: dict = {}
    pool: list = []
    for item in [*positives, *corpus]:
        if input_key(item) not in index:
            index[input_key(item)] = len(pool)
            pool.append(item)
    return pool, index


def _cpu(top: TopK) -> TopK:
    return TopK(top.values.cpu(), top.indices.cpu())


# -- files ------------------------------------------------------------------------------------------


def _read_pairs(path: str) -> tuple[list[dict], list[dict], list[str]]:
    """``(raw line objects, validated training examples, FILE:LINE of each)`` of a training JSONL
    file, same order."""
    from .training.mixed_dataset import load_examples

    examples = load_examples(path)  # every line checked as training reads it
    records = list(read_jsonl(path))
    return [record.data for record in records], examples, [record.where for record in records]


def _relative(path: str, folder: str) -> str:
    return os.path.relpath(os.path.abspath(path), folder)


def _written(item, folder: str):
    """A pool input as a ``negatives`` entry of the output: its text, or ``{"text", "image"}``."""
    if isinstance(item, str):
        return item
    out = {"image": _relative(item["image"], folder)}
    if item.get("text") is not None:
        out = {"text": item["text"], **out}
    return out


def _output_line(raw: dict, example: dict, mined: list, folder: str) -> dict:
    """The input line with image paths relative to ``folder`` and the mined negatives appended."""
    line = dict(raw)
    for key in FLAT_IMAGE_KEYS.values():
        if example.get(key) is not None:
            line[key] = _relative(example[key], folder)
    existing = [_written(n, folder) for n in example.get(NEGATIVES, [])]
    if existing or mined:
        line[NEGATIVES] = existing + mined
    return line


def check_output(path: str) -> None:
    """The output's folder exists (created) and takes a file; raises ``OSError`` otherwise."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    probe = path + ".tmp"
    with open(probe, "w", encoding="utf-8"):
        pass
    os.remove(probe)


def _bad_lines(model, queries, positives, corpus, where: list[str], corpus_where: list[str], block: int, shard: bool):
    """``(bad line numbers, bad corpus entries, messages)``: the lines whose query or positive
    the model refuses and the corpus entries it refuses (each rank checks its share)."""
    from .evaluation.scorers import find_bad_inputs

    messages, bad_lines = [], set()
    for side, inputs in ((QUERY, queries), (POSITIVE, positives)):
        for row, reason in find_bad_inputs(model, inputs, block, shard=shard):
            bad_lines.add(row)
            messages.append((row, f"{where[row]}: field {side!r}: {reason}"))
    bad_corpus = find_bad_inputs(model, corpus, block, shard=shard)
    ordered = [m for _, m in sorted(messages)] + [f"{corpus_where[row]}: {reason}" for row, reason in bad_corpus]
    return bad_lines, {row for row, _ in bad_corpus}, ordered


def mine_file(
    model,
    data: str | os.PathLike,
    output: str | os.PathLike,
    corpus: str | os.PathLike | None = None,
    *,
    on_bad_row: str = "error",
    corpus_index=None,
    **options,
) -> dict:
    """Mine negatives for every line of a training JSONL file and write the result.

    Args:
        model: an embedder (see :func:`mine_hard_negatives`).
        data: training JSONL (query / positive, optional images and negatives).
        output: where the mined JSONL goes (written to ``output + ".tmp"``, then renamed, so it
            may be ``data`` itself; by rank 0 alone with ``shard=True``).
        corpus: JSONL of extra candidates (``{"text": ..., "image"?: path}`` per line).
        on_bad_row: what to do with an input the model refuses (a text longer than it accepts,
            an image that does not decode), checked before anything is embedded: ``"error"``
            raises ``ValueError`` naming its file and line; ``"skip"`` writes such a line
            unchanged (no negatives mined for it) and never offers such a corpus entry, and
            counts them in the summary. A malformed line (an empty text, a missing image)
            is refused when the file is read, as training refuses it.
        corpus_index: a :class:`~btok_model.inference.pools.PoolOptions` instead of ``corpus``
            (see :func:`mine_hard_negatives`); its rows were checked when it was embedded.
        **options: keyword arguments of :func:`mine_hard_negatives`.

    Returns:
        a summary: ``{"lines", "pool", "negatives_per_line": {count: lines}, "short_lines",
        "positive_first", "mean_positive_score", "mean_negative_score", "mean_guarded"}`` over
        the lines mined, with ``"skipped_lines"``, ``"skipped_corpus"`` and ``"skipped"`` (the
        messages, the first 100) for ``on_bad_row="skip"``, and ``"corpus_index"`` (what the pool
        took from the output and how it was searched: ``"approximate"``) with ``corpus_index``.
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")
    data, output = os.fspath(data), os.fspath(output)
    if corpus is not None and corpus_index is not None:
        raise ValueError("give a corpus file or a corpus index, not both")
    shard = options.get("shard", False)
    writer = distributed.is_main() or not shard  # with shard, rank 0 writes for all
    if writer:
        check_output(output)
    raw, examples, where = _read_pairs(data)
    extra, extra_where = ([], []) if corpus is None else _corpus_lines(corpus)
    queries = [example_input(ex, QUERY) for ex in examples]
    positives = [example_input(ex, POSITIVE) for ex in examples]
    exclude = [ex.get(NEGATIVES, []) for ex in examples]
    block = options.get("corpus_block", 16384)
    bad_lines, bad_corpus, messages = _bad_lines(model, queries, positives, extra, where, extra_where, block, shard)
    if messages and on_bad_row == "error":
        more = f" (and {len(messages) - 1} more bad rows)" if len(messages) > 1 else ""
        raise ValueError(f"{messages[0]}{more}; --on-bad-row skip leaves such rows out")
    good = [i for i in range(len(examples)) if i not in bad_lines]
    if not good:
        raise ValueError(f"{data}: every line has an input the model refuses ({messages[0]})")
    mined = mine_hard_negatives(
        model,
        [queries[i] for i in good],
        [positives[i] for i in good],
        [item for j, item in enumerate(extra) if j not in bad_corpus],
        exclude=[exclude[i] for i in good],
        corpus_index=corpus_index,
        **options,
    )
    folder = os.path.dirname(os.path.abspath(output))
    picks = {
        i: [_written(mined.pool[j], folder) for j in mined.negatives[row].tolist() if j >= 0]
        for row, i in enumerate(good)
    }
    if writer:
        with open(output + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(
                json.dumps(_output_line(line, example, picks.get(i, []), folder), ensure_ascii=False) + "\n"
                for i, (line, example) in enumerate(zip(raw, examples))
            )
        os.replace(output + ".tmp", output)
    summary = _summary(mined)
    if mined.corpus_index is not None:
        summary["corpus_index"] = mined.corpus_index
    if on_bad_row == "skip":
        summary.update(skipped_lines=len(bad_lines), skipped_corpus=len(bad_corpus), skipped=messages[:100])
    return summary


def _corpus_lines(path: str | os.PathLike) -> tuple[list, list[str]]:
    """``(inputs, FILE:LINE of each)`` of a corpus JSONL file (see :func:`~btok_model.evaluation.task_files.load_corpus`)."""
    items = load_corpus(path)
    return items, [record.where for record in read_jsonl(path)]


def _summary(mined: MinedNegatives) -> dict:
    found = (mined.negatives >= 0).sum(1)
    counts = {int(c): int((found == c).sum()) for c in found.unique().tolist()}
    finite = mined.negative_scores[mined.negatives >= 0]
    return {
        "lines": int(found.numel()),
        "pool": len(mined.pool),
        "negatives_per_line": counts,
        "short_lines": int((found < mined.negatives.shape[1]).sum()),
        "positive_first": float((mined.positive_rank == 0).double().mean()),
        "mean_positive_score": float(mined.positive_scores.double().mean()),
        "mean_negative_score": float(finite.double().mean()) if finite.numel() else None,
        "mean_guarded": float(mined.guarded.double().mean()),
    }


# -- command line -----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    from .evaluate import BACKBONE_BASELINES, add_bad_row_argument, add_corpus_index_arguments, add_loading_arguments

    p = argparse.ArgumentParser(
        prog="python -m btok_model.mine",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="a saved BTok model or one trained with --no-btoks, or with --baseline a backbone",
    )
    p.add_argument("--gguf-file", help="load --model from this GGUF file in its folder")
    p.add_argument(
        "--baseline", choices=BACKBONE_BASELINES, help="mine with the backbone without BToks, pooled this way"
    )
    p.add_argument("--data", required=True, help="training JSONL: query / positive pairs (images, negatives kept)")
    p.add_argument("--corpus", help="JSONL of more candidates ({'text': ..., 'image'?: path} per line)")
    p.add_argument("--output", required=True, help="the mined training JSONL")
    p.add_argument("--negatives", type=int, default=4, help="negatives mined per line")
    p.add_argument("--skip-top", type=int, default=0, help="top-ranked candidates skipped (likely positives)")
    p.add_argument(
        "--max-score-margin",
        type=float,
        default=0.95,
        help="false-negative guard: drop candidates above margin x the positive's score, in (0, 1]",
    )
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass")
    p.add_argument("--query-block", type=int, default=1024, help="lines scored at once")
    p.add_argument("--corpus-block", type=int, default=16384, help="corpus inputs embedded and scored at once")
    add_loading_arguments(p)
    add_bad_row_argument(p)
    add_corpus_index_arguments(p)
    p.add_argument("--no-progress-bar", action="store_true")
    return p


@cli.command
def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    from .evaluate import join_ranks

    try:
        args.device = join_ranks(args.device)
        return _run(args)
    finally:
        distributed.shutdown()


def _run(args: argparse.Namespace) -> dict:
    from .evaluate import corpus_index_options
    from .inference.pools import open_pool_index, require_texts

    options = {
        "num_negatives": args.negatives,
        "skip_top": args.skip_top,
        "max_score_margin": args.max_score_margin,
        "query_block": args.query_block,
        "corpus_block": args.corpus_block,
    }
    try:  # everything a user can get wrong, before a model loads
        _check_options(options, _FLAGS)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be an int >= 1, got {args.batch_size}")
        _read_pairs(args.data)
        if args.corpus is not None:
            load_corpus(args.corpus)
        pool = corpus_index_options(args, least=args.skip_top + args.negatives)
        if pool is not None:
            index = open_pool_index(pool)
            require_texts(index)
        if distributed.is_main():  # the one rank that writes it
            check_output(args.output)
    except (OSError, ValueError, ImportError) as err:
        fail(str(err))
    from .evaluate import load_embedder

    model = load_embedder(args)  # mining scores pooled embeddings by cosine, whatever the model's similarity
    if pool is not None:  # before anything is embedded
        try:
            index.check_embedder(model)
        except ValueError as err:
            fail(f"--corpus-index: {err}")
    try:
        summary = mine_file(
            model,
            args.data,
            args.output,
            args.corpus,
            on_bad_row=args.on_bad_row,
            corpus_index=pool,
            shard=True,
            batch_size=args.batch_size,
            show_progress_bar=not args.no_progress_bar,
            **options,
        )
    except (OSError, ValueError) as err:  # e.g. an input the model cannot embed (an image for a text model)
        fail(str(err))
    summary.update(data=args.data, corpus=args.corpus, output=args.output, model=args.model, baseline=args.baseline)
    if distributed.is_main():
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
