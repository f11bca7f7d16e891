"""The encode engine: every embedding btok computes outside training goes through here.

``Embedder.encode``, the evaluation (pairs, candidate lists, MMEB-V2), ``mine`` and ``embed``
all call :func:`encode` (or :func:`iter_encoded_blocks`, its block-by-block form). Work is cut
into **row blocks**: rows ``[b * block_size, (b + 1) * block_size)`` of the input. Inside a
block the inputs are tokenised, sorted longest first and cut into batches of ``batch_size``
(one packed ``[1, T]`` row each with the ``"btok_triton"`` backend, padded rows otherwise);
the block's embeddings come back in input order. A block's embeddings depend only on its rows
(identical texts of a block are embedded once), never on the other blocks, so a block encodes
to the same bytes whichever process encodes it, and one process gives what several give.

Under ``torchrun`` (``torch.distributed`` initialised) ``shard=True`` gives each rank a
contiguous run of whole blocks (:func:`shard_blocks`): rank ``r`` of ``W`` encodes blocks
``[r * B // W, (r + 1) * B // W)`` of the ``B``. With ``gather=True`` every rank then gets the
whole ``[N, ...]`` result (all-gathered, input order); with ``gather=False`` each keeps its own
rows (:class:`EncodedShard`), which is how candidates stay sharded for scoring
(:mod:`btok_model.inference.scoring`).

A batch is embedded by :func:`embed_packed` (one packed row from the collator's
``pack_sequences``) or :func:`embed_padded` (right-padded rows from its ``pad_sequences``): one
forward to the last-layer states, pooled (:mod:`.pooling`). The engine works for any
:class:`~btok_model.embedder.base.Embedder` (a BTok model, the pooled baselines), pooled or
multi-vector (``multi_vector=True``: the K BTok vectors, for
MaxSim), at Matryoshka ``dims``. Another encoder -- anything with ``encode(inputs,
batch_size=, show_progress_bar=)`` returning ``[n, ...]`` rows -- is blocked, sharded and
gathered the same way, each block embedded by its own ``encode``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..backend import ATTN_IMPLEMENTATION
from .backbone import transformers_model
from .collate import ExampleError
from .media import MEDIA_BATCH_KEYS
from .packed_batch import to_device
from .pooling import padded_spans, sequence_spans
from .similarity import check_dims, truncate

__all__ = [
    "EncodedShard",
    "all_gather_rows",
    "check_inputs",
    "embed_packed",
    "embed_padded",
    "encode",
    "encode_block",
    "encode_in_length_order",
    "is_embedder",
    "iter_encoded_blocks",
    "rank_and_world",
    "row_blocks",
    "shard_blocks",
]


@dataclass(frozen=True)
class EncodedShard:
    """One rank's share of an encoded input (``encode(..., shard=True, gather=False)``).

    Attributes:
        embeddings: fp32 ``[stop - start, ...]`` on the CPU, rows ``start .. stop - 1`` of the
            input in input order (``[n, H]``, ``[n, dims]`` or ``[n, K, dims]`` as :func:`encode`).
        start, stop: the global rows this rank holds (whole blocks; ``start == stop``: none).
        num_rows: N, the rows of the whole input.
        block_size: the row block the shard is made of.
    """

    embeddings: torch.Tensor
    start: int
    stop: int
    num_rows: int
    block_size: int

    @property
    def rows(self) -> range:
        return range(self.start, self.stop)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of ``torch.distributed``, ``(0, 1)`` when it is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def row_blocks(num_rows: int, block_size: int) -> list[range]:
    """The row blocks of an input of ``num_rows`` rows: ``range(b * block_size, ...)``, the last
    one short. ``num_rows == 0`` gives none."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    return [range(lo, min(lo + block_size, num_rows)) for lo in range(0, num_rows, block_size)]


def shard_blocks(num_blocks: int, rank: int, world: int) -> range:
    """The blocks rank ``rank`` of ``world`` encodes: a contiguous run, the runs of ranks 0 ..
    world - 1 back to back, their lengths differing by at most one (a rank may get none)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must lie in [0, world={world}), got {rank}")
    return range(rank * num_blocks // world, (rank + 1) * num_blocks // world)


def is_embedder(model) -> bool:
    """Whether ``model`` is an :class:`~btok_model.embedder.base.Embedder` (the engine batches
    it itself) rather than another encoder with an ``encode(inputs, batch_size=,
    show_progress_bar=)`` method (whose ``encode`` embeds each block)."""
    return hasattr(model, "collator") and hasattr(model, "config_class")


def embed_packed(
    embedder, packed: dict, poolings: tuple[str, ...] | None = None, multi_vector: bool = False
) -> torch.Tensor:
    """The embeddings of one packed row, in one forward.

    Args:
        embedder: an :class:`~btok_model.embedder.base.Embedder`.
        packed: from its collator's ``pack_sequences`` (on any device).
        poolings: several poolings, concatenated along H (checked names); default the configured one.
        multi_vector: the K BTok states each L2-normalised, ``[n, K, H]``.

    Returns:
        fp32 ``[n, H]`` (``[n, len(poolings) * H]``, ``[n, K, H]``) on the model's device, L2-normalised.
    """
    return _pool(embedder, *_packed_states(embedder, packed), poolings, multi_vector)


def embed_padded(
    embedder, padded: dict, poolings: tuple[str, ...] | None = None, multi_vector: bool = False
) -> torch.Tensor:
    """The embeddings of right-padded rows from the collator's ``pad_sequences``, in one
    forward (``poolings``, ``multi_vector`` and the result as for :func:`embed_packed`: ``[B, ...]``)."""
    return _pool(embedder, *_padded_states(embedder, padded), poolings, multi_vector)


def _packed_states(embedder, packed: dict) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The last-layer states ``[T, H]`` of one packed row (one forward) and its sequences' spans."""
    device = embedder.device
    layout = packed["btok_layout"].to(device)
    input_ids, position_ids = (to_device(packed[key], device) for key in ("input_ids", "position_ids"))
    hidden = embedder._last_hidden_states(input_ids, position_ids, layout=layout, media=_media(packed, device))
    return hidden, sequence_spans(layout)


def _padded_states(embedder, padded: dict) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The last-layer states ``[B * S, H]`` of right-padded rows (one forward) and their spans."""
    device = embedder.device
    input_ids, position_ids, mask = (
        to_device(padded[key], device) for key in ("input_ids", "position_ids", "attention_mask")
    )
    hidden = embedder._last_hidden_states(input_ids, position_ids, attention_mask=mask, media=_media(padded, device))
    return hidden, padded_spans(padded["attention_mask"], embedder.collator.num_btoks)


def _pool(embedder, hidden: torch.Tensor, spans, poolings: tuple[str, ...] | None, multi_vector: bool) -> torch.Tensor:
    """Pooled rows ``[n, len(poolings) * H]`` (or the K BTok vectors ``[n, K, H]``), L2-normalised."""
    plans = [embedder._pooling_plan(spans, p) for p in poolings or (embedder.config.pooling,)]
    return torch.cat([plan.pool(hidden, multi_vector) for plan in plans], -1)


def _media(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The pixel inputs of a packed or padded dict (:data:`~.media.MEDIA_BATCH_KEYS` present), on ``device``."""
    return {key: to_device(batch[key], device) for key in MEDIA_BATCH_KEYS if batch.get(key) is not None}


def _check_options(embedder, batch_size, poolings, multi_vector, dims) -> tuple[tuple[str, ...] | None, int | None]:
    """The options of :func:`encode` checked; returns ``poolings`` (an older spelling mapped, with
    a ``DeprecationWarning``) and ``dims`` as an int (or None)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not is_embedder(embedder):
        if not callable(getattr(embedder, "encode", None)):
            raise TypeError(f"{type(embedder).__name__} is neither an Embedder nor has an encode(inputs, ...) method")
        if poolings or dims is not None:
            raise ValueError(f"poolings and dims need an Embedder; {type(embedder).__name__} only has encode()")
        return None, None
    if poolings is not None:
        poolings = tuple(embedder.config_class.check_pooling(p, "poolings entry") for p in poolings)
    if multi_vector and "maxsim" not in embedder.config_class.SIMILARITIES:
        raise ValueError(
            f"multi_vector=True returns the K BTok vectors of a BTokModel; {type(embedder).__name__} has no BToks "
            "(it pools the input's own tokens into one vector)"
        )
    if multi_vector and poolings:
        raise ValueError("multi_vector=True returns the K BTok vectors unpooled: give no poolings")
    if dims is not None:
        dims = check_dims([dims], embedder.embedding_dim, "dims")[0]
    return poolings, dims


def _row_shape(embedder, poolings, multi_vector: bool, dims: int | None) -> tuple[int, ...] | None:
    """The shape of one input's embedding (None: an encoder that is not an Embedder, known
    only from its output)."""
    if not is_embedder(embedder):
        return None
    width = (dims or embedder.embedding_dim) * len(poolings or (None,))
    return (embedder.collator.num_btoks, width) if multi_vector else (width,)


def _tokenize(embedder, distinct: list, inputs: list, start: int) -> tuple[list[list[int]], list]:
    """``collator.encode_for_embedding`` of a block's distinct inputs; an input it refuses is
    named by its row in the whole input (``text {start + i}``), found by checking the block's
    ``inputs`` row by row."""
    try:
        return embedder.collator.encode_for_embedding(distinct)
    except (ExampleError, OSError, ValueError) as err:
        for _, message in check_inputs(embedder, inputs, start=start, stop_at_first=True):
            raise ExampleError(message) from err
        raise


def check_inputs(embedder, inputs: Sequence, *, start: int = 0, stop_at_first: bool = False) -> list[tuple[int, str]]:
    """The inputs ``embedder`` refuses, before any forward pass: an empty text, a text (with its
    vision tokens and K BToks) longer than the model accepts, an image or video that cannot be
    read or decoded, a field of the wrong type.

    Each input is tokenised (its media read and processed) as :func:`encode` would; a block of
    inputs that passes is checked at once, a block that fails row by row.

    Args:
        embedder: an :class:`~btok_model.embedder.base.Embedder`.
        inputs: N inputs (a list, or a sequence whose slices are lists).
        start: the global row of ``inputs[0]`` (for the messages).
        stop_at_first: return after the first refused input.

    Returns:
        ``[(row, message)]`` in row order, ``row`` global, each message starting ``text {row}:``.
    """
    if not is_embedder(embedder):
        return []  # another encoder: its encode() says what it refuses
    bad = []
    n = len(inputs)
    for block in row_blocks(n, 256):
        rows = list(inputs[block.start : block.stop])
        try:
            embedder.collator.encode_for_embedding(rows)
            continue
        except (ExampleError, OSError, ValueError):
            pass
        for i, item in enumerate(rows):
            try:
                embedder.collator.encode_for_embedding([item])
            except (ExampleError, OSError, ValueError) as err:
                message = str(err)
                for prefix in ("text 0: ", "text 0 "):
                    if message.startswith(prefix):
                        message = message[len(prefix) :]
                        break
                row = start + block.start + i
                bad.append((row, f"text {row}: {message}"))
                if stop_at_first:
                    return bad
    return bad


def encode_block(
    embedder,
    inputs: list,
    *,
    batch_size: int = 32,
    packed: bool | None = None,
    poolings: tuple[str, ...] | None = None,
    multi_vector: bool = False,
    dims: int | str | None = None,
    with_btok_vectors: bool = False,
    start: int = 0,
    bar=None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The embeddings of one block of inputs: tokenised, sorted longest first, one forward per
    ``batch_size`` inputs, back in input order. Identical ``str`` inputs are embedded once.

    Runs under ``torch.inference_mode`` with the embedder in eval mode (its mode restored).

    Args:
        embedder: an :class:`~btok_model.embedder.base.Embedder`.
        inputs: n inputs (str, or for a vision-language backbone ``{"text", "image", "video",
            "fps"}`` dicts, :mod:`~btok_model.embedder.multimodal`).
        batch_size, packed, poolings, multi_vector, dims: as :func:`encode`.
        with_btok_vectors: also return a BTok model's K BTok vectors (as ``multi_vector=True``
            gives them, at ``dims``) from the same forward passes: ``(pooled, [n, K, dims])``.
            What ``embed --multi-vector`` stores; bitwise what a second call with
            ``multi_vector=True`` returns, at half the forward passes.
        start: the global row of ``inputs[0]`` (errors name ``text {start + i}``).
        bar: a tqdm bar advanced by the rows of each batch, or None.

    Returns:
        fp32 ``[n, *shape]`` on the CPU (``shape``: ``(H,)``, ``(dims,)``,
        ``(len(poolings) * dims,)`` or ``(K, dims)``), L2-normalised; with
        ``with_btok_vectors``, that and the ``[n, K, dims]`` BTok vectors.
    """
    poolings, dims = _check_options(embedder, batch_size, poolings, multi_vector, dims)
    if with_btok_vectors:
        _check_options(embedder, batch_size, None, True, dims)  # a BTok model's K vectors
        if multi_vector:
            raise ValueError(
                "with_btok_vectors=True returns the pooled rows and the K BTok vectors: give multi_vector=False"
            )
    if not is_embedder(embedder):
        if with_btok_vectors:
            raise ValueError(f"with_btok_vectors=True needs a BTok model, got {type(embedder).__name__}")
        return _foreign_block(embedder, inputs, batch_size, multi_vector, bar)
    shape = _row_shape(embedder, poolings, multi_vector, dims)
    multi_shape = _row_shape(embedder, None, True, dims) if with_btok_vectors else None
    if not len(inputs):
        empty = torch.empty(0, *shape, dtype=torch.float32)
        return (empty, torch.empty(0, *multi_shape, dtype=torch.float32)) if with_btok_vectors else empty
    distinct, where = _distinct(inputs)
    sequences, media = _tokenize(embedder, distinct, inputs, start)
    if packed is None:
        packed = transformers_model(embedder.backbone).config._attn_implementation == ATTN_IMPLEMENTATION
    size = embedder.embedding_dim
    collate, states = (
        (embedder.collator.pack_sequences, _packed_states)
        if packed
        else (embedder.collator.pad_sequences, _padded_states)
    )

    def at_dims(out: torch.Tensor) -> torch.Tensor:
        if dims is None or dims == size:
            return out
        blocks = out.view(*out.shape[:-1], -1, size)  # one block per pooling
        return truncate(blocks, dims).flatten(-2)

    def embed(rows: list[int]) -> torch.Tensor:
        part = [media[i] for i in rows]
        part = None if all(m is None for m in part) else part
        hidden, spans = states(embedder, collate([sequences[i] for i in rows], part))
        out = at_dims(_pool(embedder, hidden, spans, poolings, multi_vector))
        if not with_btok_vectors:
            return out
        # both from the one forward: one row of the length-order loop, split below
        return torch.cat([out.flatten(1), at_dims(_pool(embedder, hidden, spans, None, True)).flatten(1)], 1)

    counts = [0] * len(sequences)  # inputs of the block behind each distinct one (for the bar)
    for i in where:
        counts[i] += 1
    lengths = [len(seq) for seq in sequences]
    width = (math.prod(shape) + math.prod(multi_shape),) if with_btok_vectors else shape
    out = encode_in_length_order(embedder, lengths, batch_size, width, embed, bar=bar, weights=counts)
    out = out[torch.tensor(where, dtype=torch.long)] if len(where) != len(distinct) else out
    if not with_btok_vectors:
        return out
    pooled, vectors = out.split([math.prod(shape), math.prod(multi_shape)], 1)
    return pooled.reshape(-1, *shape), vectors.reshape(-1, *multi_shape)


def encode_in_length_order(
    module,
    lengths: list[int],
    batch_size: int,
    shape: tuple[int, ...],
    embed,
    *,
    bar=None,
    weights: list[int] | None = None,
) -> torch.Tensor:
    """The batching loop of :func:`encode_block`: inputs sorted longest first into batches of
    ``batch_size``, ``embed(indices)`` per batch under ``torch.inference_mode`` with ``module``
    in eval mode (its mode restored), the results put back in input order. (Public so that a
    benchmark's peer runs the same pipeline by construction.)

    Args:
        module: the model (its ``device`` and train/eval mode).
        lengths: n input lengths in tokens.
        batch_size: inputs per ``embed`` call.
        shape: the shape of one input's embedding (``(H,)``, ``(K, H)``).
        embed: ``list[int] -> fp32 [len(indices), *shape]`` on ``module``'s device.
        bar: a tqdm bar advanced per batch by the batch's ``weights`` (default 1 per input).
        weights: what each input counts for on the bar.

    Returns:
        fp32 ``[n, *shape]`` on the CPU, in input order.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    device = module.device
    # Rows land in sorted order in a (pinned, on CUDA) host buffer: each batch's copy is
    # asynchronous, so the host packs the next batch while the GPU computes.
    by_length = torch.empty(len(order), *shape, dtype=torch.float32, pin_memory=device.type == "cuda")
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for lo in range(0, len(order), batch_size):
                rows = order[lo : lo + batch_size]
                by_length[lo : lo + len(rows)].copy_(embed(rows), non_blocking=True)
                if bar is not None:
                    bar.update(sum(weights[i] for i in rows) if weights is not None else len(rows))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        module.train(was_training)
    out = torch.empty_like(by_length, pin_memory=False)
    out[torch.tensor(order, dtype=torch.long)] = by_length
    return out


def _foreign_block(encoder, inputs: list, batch_size: int, multi_vector: bool, bar) -> torch.Tensor:
    """One block through another encoder's own ``encode`` (fp32 on the CPU, shape checked)."""
    kwargs = {"multi_vector": True} if multi_vector else {}
    out = torch.as_tensor(encoder.encode(inputs, batch_size=batch_size, show_progress_bar=False, **kwargs))
    out = out.to(torch.float32).cpu()
    if out.dim() < 2 or out.shape[0] != len(inputs):
        raise ValueError(f"{type(encoder).__name__}.encode returned shape {tuple(out.shape)} for {len(inputs)} inputs")
    if bar is not None:
        bar.update(len(inputs))
    return out


def _distinct(inputs: list) -> tuple[list, list[int]]:
    """``(distinct inputs, position of each input among them)``: equal ``str`` inputs share one
    position; other inputs (dicts, media) are each their own."""
    seen: dict[str, int] = {}
    distinct, where = [], []
    for item in inputs:
        if isinstance(item, str):
            if item not in seen:
                seen[item] = len(distinct)
                distinct.append(item)
            where.append(seen[item])
        else:
            where.append(len(distinct))
            distinct.append(item)
    return distinct, where


def iter_encoded_blocks(
    embedder,
    inputs: Sequence,
    block_ids: Sequence[int] | None = None,
    *,
    block_size: int,
    batch_size: int = 32,
    packed: bool | None = None,
    poolings: tuple[str, ...] | None = None,
    multi_vector: bool = False,
    dims: int | str | None = None,
    progress: bool = False,
    desc: str = "Encoding",
) -> Iterator[tuple[int, range, torch.Tensor]]:
    """Encode the given row blocks one after the other, yielding each as it is done (what a
    resumable writer needs: it stores block ``b`` and asks only for the blocks it lacks).

    Args:
        embedder: an :class:`~btok_model.embedder.base.Embedder`.
        inputs: N inputs: a list, or any sequence with ``len`` whose slices ``inputs[lo:hi]``
            give lists of inputs (a reader that decodes rows only when a block asks for them).
        block_ids: which blocks of :func:`row_blocks` ``(N, block_size)``, in the order to
            encode them; None: all.
        block_size: rows per block.
        batch_size, packed, poolings, multi_vector, dims: as :func:`encode`.
        progress: a tqdm bar over the rows of these blocks (rows/s).
        desc: the bar's label.

    Yields:
        ``(block id, its rows, fp32 [len(rows), *shape] on the CPU)``, see :func:`encode_block`.
    """
    from tqdm.auto import tqdm

    poolings, _ = _check_options(embedder, batch_size, poolings, multi_vector, dims)
    blocks = row_blocks(len(inputs), block_size)
    ids = range(len(blocks)) if block_ids is None else list(block_ids)
    for b in ids:
        if not 0 <= b < len(blocks):
            raise ValueError(
                f"block id {b} is out of range: {len(inputs)} rows make {len(blocks)} blocks of {block_size}"
            )
    total = sum(len(blocks[b]) for b in ids)
    with tqdm(total=total, desc=desc, unit="row", disable=not progress or total == 0, smoothing=0.1) as bar:
        for b in ids:
            rows = blocks[b]
            part = list(inputs[rows.start : rows.stop])
            if len(part) != len(rows):
                raise ValueError(f"inputs[{rows.start}:{rows.stop}] gave {len(part)} inputs, expected {len(rows)}")
            settings = {"packed": packed, "poolings": poolings, "multi_vector": multi_vector, "dims": dims}
            yield b, rows, encode_block(embedder, part, batch_size=batch_size, start=rows.start, bar=bar, **settings)


def encode(
    embedder,
    inputs: Sequence,
    *,
    batch_size: int = 32,
    block_size: int | None = None,
    shard: bool | tuple[int, int] = False,
    gather: bool = True,
    progress: bool = False,
    packed: bool | None = None,
    poolings: tuple[str, ...] | None = None,
    multi_vector: bool = False,
    dims: int | str | None = None,
    desc: str = "Encoding",
) -> torch.Tensor | EncodedShard:
    """Embed inputs in input order, optionally sharded across ranks (see the module docstring).

    Args:
        embedder: an :class:`~btok_model.embedder.base.Embedder` (a BTok model, a pooled baseline).
        inputs: N inputs: strings, or for a vision-language backbone also dicts
            ``{"text": str | None, "image": ..., "video": ..., "fps": ...}``; a list, or a
            sequence whose slices are lists (read a block at a time).
        batch_size: inputs per forward pass.
        block_size: rows per block (the unit of sharding and of length sorting); None: one
            block of all N rows without sharding, ``8192`` with it. Results depend on the
            blocks (to float rounding), not on how many ranks encode them.
        shard: False: this process encodes every block. True: split the blocks across the
            ranks of ``torch.distributed`` (one rank when it is not initialised).
            ``(rank, world)``: this rank's share of that split (no communication; ``gather``
            must then be False).
        gather: with ``shard``, all-gather every rank's rows so each rank returns ``[N, ...]``
            (a collective: every rank must call). False: return this rank's :class:`EncodedShard`.
        progress: a tqdm bar over this rank's rows (rows/s), shown on rank 0 only.
        packed: True: each batch is one packed ``[1, T]`` row (no padding); False: right-padded
            ``[B, S]`` rows with an attention mask. None: packed with ``"btok_triton"`` (the
            kernel reads the layout directly), padded otherwise.
        poolings: pool several ways from the same forward passes (``"mean"``,
            ``"last"``); the result is then ``[N, len(poolings) * H]``, one block per pooling.
        multi_vector: a BTok model's K BTok states, each L2-normalised, instead of their pooled
            embedding (for MaxSim, :func:`~btok_model.embedder.similarity.maxsim`).
        dims: Matryoshka truncation: keep the leading ``dims`` components of every vector (of
            every pooling's block) and L2-normalise again; None or ``"full"``: all H.
        desc: the progress bar's label.

    Returns:
        fp32 ``[N, H]`` (``[N, dims]``; ``[N, len(poolings) * dims]``; ``[N, K, dims]`` with
        ``multi_vector``) on the CPU, L2-normalised, in input order; or with ``shard`` and
        ``gather=False`` an :class:`EncodedShard` of this rank's rows.

    Raises:
        ExampleError: an input the model refuses (empty text, too long, unreadable media),
            named ``text {row}`` by its row in ``inputs``.
    """
    poolings, dims = _check_options(embedder, batch_size, poolings, multi_vector, dims)
    if isinstance(inputs, (str, dict)) or not hasattr(inputs, "__len__"):
        raise ExampleError(
            f"texts must be a list of str or input dicts (wrap a single text: [text]), got {type(inputs).__name__}"
        )
    n = len(inputs)
    if shard is False:
        rank, world, communicate = 0, 1, False
    elif shard is True:
        (rank, world), communicate = rank_and_world(), True
    else:
        rank, world = shard
        communicate = False
        if gather:
            raise ValueError("shard=(rank, world) encodes one rank's share without communication: pass gather=False")
    if block_size is None:
        block_size = max(n, 1) if shard is False else 8192
    blocks = row_blocks(n, block_size)
    mine = shard_blocks(len(blocks), rank, world)
    settings = {"packed": packed, "poolings": poolings, "multi_vector": multi_vector, "dims": dims}
    parts = [
        emb
        for _, _, emb in iter_encoded_blocks(
            embedder,
            inputs,
            mine,
            block_size=block_size,
            batch_size=batch_size,
            progress=progress and rank == 0,
            desc=desc,
            **settings,
        )
    ]
    shape = _row_shape(embedder, poolings, multi_vector, dims)
    local = torch.cat(parts) if parts else torch.empty(0, *(shape or (0,)), dtype=torch.float32)
    start = blocks[mine.start].start if mine.start < len(blocks) else n
    stop = start + local.shape[0]
    if shard is False:
        return local
    if not gather:
        return EncodedShard(local, start, stop, n, block_size)
    if not communicate or world == 1:
        return local
    return all_gather_rows(local, getattr(embedder, "device", None) or "cpu")


def all_gather_rows(local: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Every rank's rows concatenated in rank order (a collective; ranks may hold different
    numbers of rows), returned on the CPU. With NCCL the rows travel through ``device`` (this
    rank's GPU). Identity without ``torch.distributed``.

    Args:
        local: ``[n, ...]`` this rank's rows (same trailing shape and dtype on every rank).
        device: this rank's device.
    """
    if rank_and_world()[1] == 1:
        return local
    comm = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")
    shapes = [None] * dist.get_world_size()
    dist.all_gather_object(shapes, tuple(local.shape))
    sizes = [s[0] for s in shapes]
    trailing = next((s[1:] for s in shapes if s[0]), local.shape[1:])  # a rank without rows knows no shape
    local = local.reshape(local.shape[0], *trailing) if local.shape[0] else local.new_zeros((0, *trailing))
    longest = max(sizes)
    padded = local.new_zeros((longest, *local.shape[1:])).to(comm)
    padded[: local.shape[0]] = local.to(comm)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).cpu()
