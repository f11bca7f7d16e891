"""``python -m btok_model.mine``: hard negatives for training pairs, mined with a first model.

    python -m btok_model.mine --model runs/smol --data pairs.jsonl --corpus corpus.jsonl \\
        --output mined.jsonl --negatives 4 --skip-top 1 --max-score-margin 0.95
    python -m btok_model.mine --baseline last-token --model smollm2 --data pairs.jsonl --output mined.jsonl

Each line of ``--data`` (training JSONL, see :mod:`btok_model.training.mixed_dataset`) is written to
``--output`` with up to ``--negatives`` mined negatives added to its ``negatives``: the
candidates the model ranks highest for its query, among

* the pool: every distinct positive of the file, then the ``--corpus`` lines (``{"text": ...,
  "image"?: path}``, the evaluation's corpus format) that are not already in it; an input's
  identity is its text and image path (the same text is the same candidate);
* minus the excluded: the positives of every line with the same query (a query with two
  positives gets neither as a negative), the query itself, and the line's own ``negatives``;
* minus the ``--skip-top`` highest-ranked of the candidates left (likely unlabelled
  positives);
* minus the false-negative guard: candidates scoring above ``positive - (1 - margin) *
  |positive|`` (``--max-score-margin`` times the positive's score when it is >= 0: NV-Retriever's
  "TopK-PercPos", sentence-transformers' ``relative_margin = 1 - margin``).

The skip counts ranks before the guard (ranks of the model's list, whatever the guard drops),
so ``--skip-top 1`` drops the nearest candidate even when the guard drops it too. Equal scores
rank the candidate met first in the pool first. A line keeps its other fields and its own
negatives (first); image paths are rewritten relative to the output file's folder. Fewer than
``--negatives`` are written where fewer candidates qualify; the summary says how often.

Memory: the queries' and positives' embeddings are held; the corpus is embedded ``--corpus-block``
inputs at a time and scored against ``--query-block`` queries at a time, keeping a running top
list per query (:class:`~btok_model.evaluation.topk.RunningTopK`): no ``[queries, corpus]``
matrix and no whole-corpus embedding matrix is held.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

import torch

from .datasets.jsonl import read_jsonl
from .evaluation.task_files import input_key, load_corpus
from .evaluation.topk import RunningTopK

__all__ = ["MinedNegatives", "main", "mine_file", "mine_hard_negatives", "parser"]

IMAGE_KEYS = {"query": "query_image", "positive": "positive_image"}


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
    """

    pool: list
    negatives: torch.Tensor
    negative_scores: torch.Tensor
    positive_scores: torch.Tensor
    positive_rank: torch.Tensor
    guarded: torch.Tensor


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


def _encode(model, inputs: list, batch_size: int, show_progress_bar: bool, device) -> torch.Tensor:
    """fp32 ``[len(inputs), H]`` on ``device``."""
    emb = torch.as_tensor(model.encode(inputs, batch_size=batch_size, show_progress_bar=show_progress_bar))
    if emb.dim() != 2 or emb.shape[0] != len(inputs):
        raise ValueError(f"model.encode returned shape {tuple(emb.shape)} for {len(inputs)} inputs")
    return emb.to(device=device, dtype=torch.float32)


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
) -> MinedNegatives:
    """Each (query, positive) line's hardest negatives in the pool of positives and corpus.

    The rules (pool, exclusions, ``skip_top``, the false-negative guard, ties) are those of the
    module docstring; scores are cosine similarities of ``model.encode``'s embeddings.

    Args:
        model: anything with ``encode(inputs, batch_size=, show_progress_bar=)`` returning fp32
            ``[N, H]`` L2-normalised rows (:class:`~btok_model.BTokModel`,
            :class:`~btok_model.embedder.pooled.PooledEmbedder`).
        queries, positives: L inputs each (str, or ``{"text", "image"}`` for a multimodal model).
        corpus: more candidates (inputs).
        num_negatives: negatives per line (n >= 1).
        skip_top: top-ranked candidates skipped per line (>= 0).
        max_score_margin: the false-negative guard's margin, in (0, 1].
        exclude: per line, inputs it may not take (e.g. its existing negatives).
        batch_size: inputs per forward pass.
        query_block, corpus_block: lines scored at once; corpus inputs embedded at once.
        show_progress_bar: tqdm bars while embedding.
        device: where scores are computed (default: the model's device, else the CPU).

    Returns:
        :class:`MinedNegatives`.
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
    index: dict = {}
    pool: list = []
    for item in [*positives, *corpus]:
        if input_key(item) not in index:
            index[input_key(item)] = len(pool)
            pool.append(item)
    positive_index = [index[input_key(p)] for p in positives]
    num_positives = len({*positive_index})
    excluded = _excluded(queries, exclude, index, positive_index).to(device)

    distinct_queries = list({input_key(q): q for q in queries}.values())
    query_rows = {input_key(q): i for i, q in enumerate(distinct_queries)}
    query_emb = _encode(model, distinct_queries, batch_size, show_progress_bar, device)
    query_emb = query_emb[torch.tensor([query_rows[input_key(q)] for q in queries], device=device)]
    positive_emb = _encode(model, pool[:num_positives], batch_size, show_progress_bar, device)
    positive_scores = (query_emb * positive_emb[torch.tensor(positive_index, device=device)]).sum(-1)
    threshold = positive_scores - (1 - max_score_margin) * positive_scores.abs()

    lines = len(queries)
    skipped = RunningTopK(lines, skip_top, device)
    kept = RunningTopK(lines, skip_top + num_negatives, device)
    positive_rank = torch.zeros(lines, dtype=torch.long, device=device)
    guarded = torch.zeros(lines, dtype=torch.long, device=device)
    spans = [(lo, min(lo + corpus_block, num_positives)) for lo in range(0, num_positives, corpus_block)]
    spans += [(lo, min(lo + corpus_block, len(pool))) for lo in range(num_positives, len(pool), corpus_block)]
    bar = _bar(len(pool) - num_positives, show_progress_bar)
    for lo, hi in spans:
        if lo < num_positives:
            block = positive_emb[lo:hi]
        else:
            block = _encode(model, pool[lo:hi], batch_size, False, device)
            bar.update(hi - lo)
        for start in range(0, lines, query_block):
            rows = slice(start, min(start + query_block, lines))
            scores = _mask_block(query_emb[rows] @ block.T, excluded[rows], lo)
            positive_rank[rows] += (scores > positive_scores[rows, None]).sum(1)
            over = scores > threshold[rows, None]
            guarded[rows] += over.sum(1)
            skipped.update(rows, scores, lo)
            kept.update(rows, scores.masked_fill(over, float("-inf")), lo)
    bar.close()

    # The kept list minus the skipped ranks: at most skip_top entries go, so n remain where n qualify.
    drop = (kept.indices[:, :, None] == skipped.indices[:, None, :]).any(-1) | (kept.indices < 0)
    first = torch.sort(drop.to(torch.uint8), dim=1, stable=True).indices[:, :num_negatives]
    negatives = torch.where(drop.gather(1, first), -1, kept.indices.gather(1, first))
    negative_scores = kept.values.gather(1, first).masked_fill(negatives < 0, float("-inf"))
    return MinedNegatives(
        pool, negatives.cpu(), negative_scores.cpu(), positive_scores.cpu(), positive_rank.cpu(), guarded.cpu()
    )


def _bar(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="corpus", unit="input", disable=not show or total == 0)


# -- files ------------------------------------------------------------------------------------------


def _read_pairs(path: str) -> tuple[list[dict], list[dict]]:
    """``(raw line objects, validated training examples)`` of a training JSONL file, same order."""
    from .training.mixed_dataset import load_examples

    examples = load_examples(path)  # every line checked as training reads it
    raw = [record.data for record in read_jsonl(path)]
    return raw, examples


def _side(example: dict, side: str):
    """The embedder input of a validated example's query or positive (text, or text + image)."""
    image = example.get(IMAGE_KEYS[side])
    return example.get(side) if image is None else {"text": example.get(side), "image": image}


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
    for key in IMAGE_KEYS.values():
        if example.get(key) is not None:
            line[key] = _relative(example[key], folder)
    existing = [_written(n, folder) for n in example.get("negatives", [])]
    if existing or mined:
        line["negatives"] = existing + mined
    return line


def check_output(path: str) -> None:
    """The output's folder exists (created) and takes a file; raises ``OSError`` otherwise."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    probe = path + ".tmp"
    with open(probe, "w", encoding="utf-8"):
        pass
    os.remove(probe)


def mine_file(
    model,
    data: str | os.PathLike,
    output: str | os.PathLike,
    corpus: str | os.PathLike | None = None,
    **options,
) -> dict:
    """Mine negatives for every line of a training JSONL file and write the result.

    Args:
        model: an embedder (see :func:`mine_hard_negatives`).
        data: training JSONL (query / positive, optional images and negatives).
        output: where the mined JSONL goes (written to ``output + ".tmp"``, then renamed, so it
            may be ``data`` itself).
        corpus: JSONL of extra candidates (``{"text": ..., "image"?: path}`` per line).
        **options: keyword arguments of :func:`mine_hard_negatives`.

    Returns:
        a summary: ``{"lines", "pool", "negatives_per_line": {count: lines}, "short_lines",
        "positive_first", "mean_positive_score", "mean_negative_score", "mean_guarded"}``.
    """
    data, output = os.fspath(data), os.fspath(output)
    check_output(output)
    raw, examples = _read_pairs(data)
    extra = load_corpus(corpus) if corpus is not None else []
    queries = [_side(ex, "query") for ex in examples]
    positives = [_side(ex, "positive") for ex in examples]
    exclude = [ex.get("negatives", []) for ex in examples]
    mined = mine_hard_negatives(model, queries, positives, extra, exclude=exclude, **options)
    folder = os.path.dirname(os.path.abspath(output))
    lines = []
    for i, (line, example) in enumerate(zip(raw, examples)):
        picks = [_written(mined.pool[j], folder) for j in mined.negatives[i].tolist() if j >= 0]
        lines.append(_output_line(line, example, picks, folder))
    with open(output + ".tmp", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(output + ".tmp", output)
    return _summary(mined)


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
    from .evaluate import add_loading_arguments

    p = argparse.ArgumentParser(
        prog="python -m btok_model.mine",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a saved BTok model, or with --baseline a backbone")
    p.add_argument("--gguf-file", help="load --model from this GGUF file in its folder")
    p.add_argument(
        "--baseline", choices=("last-token", "mean"), help="mine with the backbone without BToks, pooled this way"
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
    p.add_argument("--no-progress-bar", action="store_true")
    return p


def _fail(message: str) -> SystemExit:
    """A user-fixable error: one ``error: ...`` line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(2)


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
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
        check_output(args.output)
    except (OSError, ValueError) as err:
        raise _fail(str(err)) from None
    from .evaluate import load_embedder

    try:  # mining scores pooled embeddings by cosine, whatever the model's similarity
        model = load_embedder(args)
    except (OSError, ValueError) as err:  # a model folder or hub name that is not there
        raise _fail(f"--model {args.model}: {err}") from None
    except SystemExit as err:  # load_embedder's own "error: ..." (not a saved BTok model), printed as ours
        if isinstance(err.code, str):
            raise _fail(err.code.removeprefix("error: ")) from None
        raise
    try:
        summary = mine_file(
            model,
            args.data,
            args.output,
            args.corpus,
            batch_size=args.batch_size,
            show_progress_bar=not args.no_progress_bar,
            **options,
        )
    except (OSError, ValueError) as err:  # e.g. an input the model cannot embed (an image for a text model)
        raise _fail(str(err)) from None
    summary.update(data=args.data, corpus=args.corpus, output=args.output, model=args.model, baseline=args.baseline)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
