"""Examples -> one packed BTok batch, and texts -> BTok inputs for embedding.

Training examples are dicts::

    {"query": input, "positive": input, "negatives": [input, ...] (optional), "target": str | None (optional)}

An input is a str, or (multimodal backbones, :mod:`.multimodal`) a dict
``{"text": str | None, "image": ..., "video": ..., "fps": ...}``; the flat keys
``query_image`` / ``positive_image`` (the JSONL training format) add an image to the query /
positive. Targets are text only.

One batch packs every sequence into a single row ``[1, T]`` (no padding): first the ``Nq``
queries ``[query | K BToks | target]`` (condensation mask), then the ``Nq`` positives and
the hard negatives ``[candidate | K BToks]`` (plain causal). Positions restart at 0 for every
sequence, so target positions continue after the BToks.

Target of an example: ``"target"`` when given (``None`` or ``""``: this example has no
target); otherwise the positive's text. It is wrapped ``prefix + text + suffix``
(``<|im_start|>assistant\\n`` + text + ``<|im_end|>`` by default), each piece tokenised on its
own; the text and suffix tokens are scored, the prefix is only seen. The first scored token
is predicted by the last prefix token, a target row: were the prefix empty, the first text
token would have to be predicted by the last BTok, which sees the query, so it is then left
unscored too (the authors' two-pass formulation cannot score it either).

:class:`BTokCollator` holds no model, so DataLoader workers can pickle it. Multimodal
backbones get :class:`~btok_model.embedder.multimodal.MultimodalCollator`, which overrides
:meth:`BTokCollator._encode_inputs` (images and videos through the model's processor) and
the packing's positions and pixel inputs (the model's own 3D rope index); this text-only
collator refuses images with an error naming the example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING

import torch

from btok_kernels import CondensationLayout

if TYPE_CHECKING:
    from .multimodal import Media

__all__ = ["BTokCollator", "EncodedExample", "ExampleError", "concat_ranges"]

EXAMPLE_KEYS = ("query", "positive", "negatives", "target", "source", "target_side")
IMAGE_KEYS = (
    "query_image",
    "positive_image",
    "negative_images",
    "image",
    "images",
    "video",
    "videos",
    "query_video",
    "positive_video",
)
# The keys of a multimodal input dict (``{"text": ..., "image": ...}``).
INPUT_KEYS = ("text", "image", "video", "fps")
MEDIA_INPUT_KEYS = ("image", "images", "video", "videos")
IGNORE_INDEX = -100


class ExampleError(ValueError):
    """A training example or an input text that cannot be used, named by index and field."""


def concat_ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``cat([arange(s, s + n) for s, n in zip(starts, lengths)])`` without a Python loop.

    Args:
        starts, lengths: int64 ``[n]`` (lengths >= 0).

    Returns:
        int64 ``[lengths.sum()]``.
    """
    total = int(lengths.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    offsets = torch.cumsum(lengths, 0) - lengths  # where each range starts in the output
    within = torch.arange(total) - torch.repeat_interleave(offsets, lengths)
    return torch.repeat_interleave(starts, lengths) + within


@dataclass
class EncodedExample:
    """Token ids of one example (no BToks).

    Attributes:
        query: the query ids (image / video placeholders expanded).
        candidates: the positive's ids, then each hard negative's.
        target: ``prefix + text + suffix`` ids, or ``[]`` for no target.
        unscored: how many leading target ids get no loss.
        query_media: the processed image / video of the query, or None (text only).
        candidate_media: one entry (:class:`~btok_model.embedder.multimodal.Media` or None)
            per candidate, or None when every candidate is text only.
    """

    query: list[int]
    candidates: list[list[int]]
    target: list[int]
    unscored: int
    query_media: Media | None = None
    candidate_media: list[Media | None] | None = None

    def media(self) -> list[Media | None]:
        """The media of the query, then of each candidate (None: text only)."""
        return [self.query_media] + (self.candidate_media or [None] * len(self.candidates))


class BTokCollator:
    """Tokenises and packs BTok batches; picklable, no model inside.

    Args:
        tokenizer: a transformers tokenizer holding the BTok tokens.
        btok_ids: the K BTok ids appended after every input.
        target_prefix, target_suffix: the target wrapping (see the module docstring).
        max_length: the longest sequence accepted (input + K [+ target]), or None.
        limit_name: how error messages name that limit (e.g. ``"max_length=512"``).
        with_targets: collate targets; False (generative weight 0) leaves them out entirely.
    """

    def __init__(
        self,
        tokenizer,
        btok_ids: Sequence[int],
        *,
        target_prefix: str = "<|im_start|>assistant\n",
        target_suffix: str = "<|im_end|>",
        max_length: int | None = None,
        limit_name: str | None = None,
        with_targets: bool = True,
    ):
        self.tokenizer = tokenizer
        self.btok_ids = [int(i) for i in btok_ids]
        self.max_length = max_length
        self.limit_name = limit_name or f"max_length={max_length}"
        self.with_targets = with_targets
        self.prefix_ids = self._plain_ids(target_prefix)
        self.suffix_ids = self._plain_ids(target_suffix)
        self.unscored = max(len(self.prefix_ids), 1)

    @property
    def num_btoks(self) -> int:
        return len(self.btok_ids)

    @property
    def pad_id(self) -> int:
        """The id written into padding (never attended): the tokenizer's pad, else EOS, else 0."""
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return candidate
        return 0

    def __call__(self, examples: Sequence[dict]) -> dict:
        """Pack ``examples`` into one batch.

        Returns:
            dict with ``input_ids`` int64 ``[1, T]``; ``position_ids`` int64 ``[1, T]``
            (restarting at 0 per sequence); ``btok_layout`` a CPU
            :class:`~btok_kernels.CondensationLayout`; ``labels`` int64 ``[1, T]`` (-100 except
            scored target tokens, unshifted as in transformers); ``query_btok_index`` int64
            ``[Nq, K]`` and ``candidate_btok_index`` int64 ``[Nc, K]`` (flat positions of each
            sequence's BToks); ``positive_index`` int64 ``[Nq]`` (``i``: the positives are the
            first Nq candidates); ``num_target_tokens`` int (scored target tokens).
        """
        return self.pack(self.encode_examples(examples))

    # -- tokenisation and validation ------------------------------------------------------
    def encode_examples(self, examples: Sequence[dict]) -> list[EncodedExample]:
        """Validate and tokenise training examples (no BToks added)."""
        if isinstance(examples, dict) or not isinstance(examples, Sequence) or len(examples) == 0:
            raise ExampleError(f"examples must be a non-empty list of dicts, got {_describe(examples)}")
        fields = [self._check_example(i, ex) for i, ex in enumerate(examples)]
        queries, query_media = self._encode_inputs([f[0] for f in fields], [(i, "query") for i in range(len(fields))])
        cand_values, cand_where = [], []
        for i, (_, positive, negatives, _) in enumerate(fields):
            cand_values += [positive, *negatives]
            cand_where += [(i, "positive")] + [(i, f"negatives[{j}]") for j in range(len(negatives))]
        cand_ids, cand_media = self._encode_inputs(cand_values, cand_where)
        candidates, media = iter(cand_ids), iter(cand_media)
        with_target = [i for i, f in enumerate(fields) if f[3] is not None]
        target_text = dict(zip(with_target, self._plain_batch([fields[i][3] for i in with_target])))
        encoded = []
        for i, (_, _, negatives, _) in enumerate(fields):
            target = []
            if i in target_text:
                target = self.prefix_ids + target_text[i] + self.suffix_ids
                if len(target) <= self.unscored:
                    raise ExampleError(f"example {i}, field 'target': the target has no tokens to score")
            n = 1 + len(negatives)
            own_media = [next(media) for _ in range(n)]
            encoded.append(
                EncodedExample(
                    query=queries[i],
                    candidates=[next(candidates) for _ in range(n)],
                    target=target,
                    unscored=self.unscored if target else 0,
                    query_media=query_media[i],
                    candidate_media=own_media if any(m is not None for m in own_media) else None,
                )
            )
        return encoded

    def _check_example(self, i: int, ex) -> tuple:
        """``(query, positive, negatives, target text or None)`` of example ``i``, validated."""
        if not isinstance(ex, dict):
            raise ExampleError(f"example {i} must be a dict with 'query' and 'positive', got {_describe(ex)}")
        ex = self._merge_flat_media(i, ex)
        unknown = sorted(set(ex) - set(EXAMPLE_KEYS))
        if unknown:
            raise ExampleError(f"example {i}: unknown fields {unknown}; known fields: {list(EXAMPLE_KEYS)}")
        if "query" not in ex or ex["query"] is None:
            what = "has a target but no query" if ex.get("target") else "has no 'query'"
            raise ExampleError(f"example {i} {what}")
        if "positive" not in ex or ex["positive"] is None:
            raise ExampleError(f"example {i} has no 'positive' (the text its query should retrieve)")
        negatives = ex.get("negatives", [])
        if negatives is None:
            negatives = []
        if isinstance(negatives, str) or not isinstance(negatives, (list, tuple)):
            raise ExampleError(f"example {i}, field 'negatives': must be a list of texts, got {_describe(negatives)}")
        if "target" in ex:
            target, field = ex["target"], "target"
        else:  # the positive's text; an image-only positive gives no target
            target, field = ex["positive"], "positive"
            if isinstance(target, dict) and set(target) <= set(INPUT_KEYS):
                target = target.get("text") or None
        if target is not None and not isinstance(target, str):
            raise ExampleError(
                f"example {i}, field {field!r}: a target must be a str or None (targets are text only, no image or "
                f"video), got {_describe(target)}"
            )
        side = ex.get("target_side", "positive")
        if side not in ("positive", "none"):
            raise ExampleError(
                f"example {i}, field 'target_side': {side!r} is not supported here; this collator generates the "
                "positive's text ('positive') or nothing ('none')"
            )
        if not self.with_targets or target == "" or side == "none":
            target = None
        return ex["query"], ex["positive"], list(negatives), target

    def _merge_flat_media(self, i: int, ex: dict) -> dict:
        """The example with flat image keys (``query_image``...) folded into its inputs; this
        text-only collator refuses them."""
        images = [k for k in ex if k in IMAGE_KEYS]
        if images:
            raise ExampleError(f"example {i}, field {images[0]!r}: {_NO_IMAGES}")
        return ex

    def tokenize(self, texts: Sequence) -> list[list[int]]:
        """Token ids of each input with the K BToks appended (what ``encode`` embeds)."""
        return self.encode_for_embedding(texts)[0]

    def encode_for_embedding(self, texts: Sequence) -> tuple[list[list[int]], list[Media | None]]:
        """``(ids + K BToks, media)`` of each input to embed; media None for text only."""
        if isinstance(texts, (str, dict)) or not isinstance(texts, Sequence):
            raise ExampleError(f"texts must be a list of str (wrap a single text: [text]), got {_describe(texts)}")
        where = [(i, None) for i in range(len(texts))]
        ids, media = self._encode_inputs(list(texts), where)
        for (i, _), seq in zip(where, ids):
            self._check_length(len(seq) + self.num_btoks, i, None, "the text + K BToks")
        return [seq + self.btok_ids for seq in ids], media

    def _encode_inputs(
        self, values: list, where: list[tuple[int, str | None]]
    ) -> tuple[list[list[int]], list[Media | None]]:
        """Ids of query/candidate inputs with the tokenizer's special tokens, and their media
        (all None here: this collator takes texts, or ``{"text": ...}`` dicts without media)."""
        texts = [self._input_text(value, _name(i, field)) for value, (i, field) in zip(values, where)]
        return self._text_ids(texts, where), [None] * len(values)

    def _input_text(self, value, name: str) -> str:
        """The text of a text-only input, validated."""
        if isinstance(value, dict):
            if any(value.get(k) is not None for k in MEDIA_INPUT_KEYS):
                raise ExampleError(f"{name}: {_NO_IMAGES}")
            unknown = sorted(set(value) - set(INPUT_KEYS))
            if unknown:
                raise ExampleError(f"{name}: unknown keys {unknown} in an input dict; known keys: {list(INPUT_KEYS)}")
            value = value.get("text")
        if not isinstance(value, str):
            raise ExampleError(f"{name}: must be a str, got {_describe(value)}")
        if not value.strip():
            raise ExampleError(f"{name}: empty text")
        return value

    def _text_ids(self, texts: list[str], where: list[tuple[int, str | None]]) -> list[list[int]]:
        """Ids of validated texts (the tokenizer's special tokens added); no text may hold a BTok."""
        if not texts:
            return []
        ids = [list(x) for x in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        btoks = set(self.btok_ids)
        for seq, (i, field) in zip(ids, where):
            if not seq:
                raise ExampleError(f"{_name(i, field)}: the text has no tokens")
            if btoks.intersection(seq):
                raise ExampleError(f"{_name(i, field)}: the text contains a BTok token ({self._btok_names()})")
        return ids

    def _plain_ids(self, text: str) -> list[int]:
        return self._plain_batch([text])[0] if text else []

    def _plain_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids without the tokenizer's special tokens (target pieces)."""
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _btok_names(self) -> str:
        return ", ".join(self.tokenizer.convert_ids_to_tokens(self.btok_ids))

    def _check_length(self, length: int, i: int, field: str | None, what: str) -> None:
        if self.max_length is not None and length > self.max_length:
            raise ExampleError(
                f"{_name(i, field)}: {what} is {length} tokens, longer than {self.limit_name} "
                "(inputs are never truncated: shorten the text or raise the limit)"
            )

    # -- packing ----------------------------------------------------------------------------
    def pack(self, encoded: list[EncodedExample]) -> dict:
        """Pack tokenised examples into one batch (see :meth:`__call__` for the keys)."""
        k = self.num_btoks
        for i, ex in enumerate(encoded):
            self._check_length(len(ex.query) + k, i, "query", f"the query + {k} BToks")
            self._check_length(len(ex.query) + k + len(ex.target), i, "target", f"query + {k} BToks + target")
            for j, cand in enumerate(ex.candidates):
                field = "positive" if j == 0 else f"negatives[{j - 1}]"
                self._check_length(len(cand) + k, i, field, f"the candidate + {k} BToks")
        positives = [ex.candidates[0] for ex in encoded]
        negatives = [c for ex in encoded for c in ex.candidates[1:]]
        inputs = [ex.query for ex in encoded] + positives + negatives
        targets = [ex.target for ex in encoded] + [[]] * (len(positives) + len(negatives))
        media = [ex.query_media for ex in encoded]
        media += [ex.media()[1] for ex in encoded] + [m for ex in encoded for m in ex.media()[2:]]
        batch = self.pack_sequences(inputs, targets, media)
        num_queries = len(encoded)
        btok_index = batch.pop("btok_index")
        batch["query_btok_index"] = btok_index[:num_queries]
        batch["candidate_btok_index"] = btok_index[num_queries:]
        batch["positive_index"] = torch.arange(num_queries)

        # Scored target tokens: all but the first ``unscored`` of each target.
        starts = batch["btok_layout"].cu_seqlens[:num_queries].long()
        target_lens = torch.tensor([len(ex.target) for ex in encoded], dtype=torch.long)
        unscored = torch.tensor([ex.unscored for ex in encoded], dtype=torch.long)
        query_lens = torch.tensor([len(ex.query) for ex in encoded], dtype=torch.long)
        scored = concat_ranges(starts + query_lens + k + unscored, (target_lens - unscored).clamp_min(0))
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        labels[0, scored] = batch["input_ids"][0, scored]
        batch["labels"] = labels
        batch["num_target_tokens"] = scored.numel()
        return batch

    def pack_sequences(
        self, inputs: list[list[int]], targets: list[list[int]] | None = None, media: list | None = None
    ) -> dict:
        """Pack ``[input | BToks | target]`` sequences into one row.

        Args:
            inputs: ids of each input (no BToks).
            targets: ids of each target (``[]``: none), or None for no targets at all.
            media: the media of each input (None entries: text only), or None; a text-only
                collator accepts only None entries.

        Returns:
            dict with ``input_ids`` / ``position_ids`` int64 ``[1, T]``, ``btok_layout``
            (CPU) and ``btok_index`` int64 ``[n, K]``.
        """
        _check_text_only(media)
        if targets is None:
            targets = [[]] * len(inputs)
        k = self.num_btoks
        input_lens = [len(x) for x in inputs]
        target_lens = [len(t) for t in targets]
        layout = CondensationLayout.from_lengths(input_lens, k, target_lens)
        ids = list(chain.from_iterable(chain(x, self.btok_ids, t) for x, t in zip(inputs, targets)))
        input_ids = torch.tensor(ids, dtype=torch.long)[None]
        starts = layout.cu_seqlens[:-1].long()
        btok_index = (starts + torch.tensor(input_lens, dtype=torch.long))[:, None] + torch.arange(k)
        return {
            "input_ids": input_ids,
            "position_ids": self._position_ids(layout),
            "btok_layout": layout,
            "btok_index": btok_index,
        }

    def pad_sequences(self, sequences: list[list[int]], media: list | None = None) -> dict:
        """Right-pad ``[input | BToks]`` sequences into ``[B, S]``.

        Args:
            sequences: ids of each ``[input | BToks]``.
            media: as in :meth:`pack_sequences`.

        Returns:
            dict with ``input_ids``, ``attention_mask`` and ``position_ids`` int64 ``[B, S]``
            and ``btok_index`` int64 ``[B, K]`` (flat positions in the ``B * S`` tokens).
        """
        _check_text_only(media)
        lens = torch.tensor([len(s) for s in sequences], dtype=torch.long)
        width = int(lens.max())
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        positions = torch.arange(width).expand(len(sequences), width)
        mask = positions < lens[:, None]
        input_ids[mask] = torch.tensor(list(chain.from_iterable(sequences)), dtype=torch.long)
        k = self.num_btoks
        btok_index = (torch.arange(len(sequences)) * width + lens - k)[:, None] + torch.arange(k)
        return {
            "input_ids": input_ids,
            "attention_mask": mask.long(),
            "position_ids": positions.clone(),
            "btok_index": btok_index,
        }

    def _position_ids(self, layout: CondensationLayout) -> torch.Tensor:
        """int64 ``[1, T]``: 0, 1, ... within every packed sequence (targets continue after the BToks)."""
        lens = torch.tensor(layout.seqlens, dtype=torch.long)
        return concat_ranges(torch.zeros_like(lens), lens)[None]


_NO_IMAGES = (
    "images and videos need a multimodal backbone (Qwen2-VL / Qwen2.5-VL) with its processor; this BTok "
    "model is text-only"
)


def _check_text_only(media: list | None) -> None:
    if media is not None and any(m is not None for m in media):
        raise ValueError("this collator is text-only: it cannot pack images or videos")


def _name(i: int, field: str | None) -> str:
    return f"text {i}" if field is None else f"example {i}, field {field!r}"


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"
