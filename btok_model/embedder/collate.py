"""Examples -> one packed BTok batch, and texts -> BTok inputs for embedding.

:meth:`BTokCollator.collate` takes training examples ``{"query", "positive", "negatives"?,
"target_side"?, "target"?, "source"?}`` whose inputs are strs (a vision-language backbone's may be
the dicts of :mod:`.multimodal`; the JSONL keys ``query_image`` / ``positive_image`` add an image)
and packs them into ONE row ``[1, T]``, no padding: the ``Nq`` queries ``[query | K BToks |
target?]``, then the positives ``[positive | K BToks | target?]`` and the hard negatives
``[negative | K BToks]`` (never a target), under the condensation mask, positions restarting per
sequence (a target's at its sequence's token count before it). ``target_side`` says whose BToks
generate whose input, ``"target"`` replaces the text the query's BToks generate, and
``with_targets=False`` (generative weight 0) leaves every target out. A target is wrapped
``prefix + body + suffix`` and scored on the body and suffix. Bad input raises
:class:`ExampleError` naming the example and field; nothing is truncated. The rules in full:
docs/api.md (``model.collate``) and docs/design.md ("Which side generates", "Target positions").

:class:`BTokCollator` holds no model, so DataLoader workers can pickle it. Multimodal
backbones get :class:`~btok_model.embedder.multimodal.MultimodalCollator`, which overrides
how inputs become prompts and ids (images and videos through the model's processor) and the
packing's positions and pixel inputs (the model's own 3D rope index); this text-only
collator refuses images with an error naming the example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import chain

import torch

from btok_kernels import CondensationLayout

from ..datasets.schema import EXAMPLE_KEYS, FLAT_IMAGE_KEYS, TARGET_SIDES
from ..deprecation import warn_deprecated
from .media import Media
from .packed_batch import BTokBatch

__all__ = [
    "TARGET_SIDES",
    "BTokCollator",
    "EncodedExample",
    "ExampleError",
    "Target",
    "check_generation",
    "concat_ranges",
    "describe_value",
    "input_name",
]

# EXAMPLE_KEYS and TARGET_SIDES (whose BToks generate a target, the authors' ``ntp_side``, see
# docs/design.md) are the example schema's, :mod:`btok_model.datasets.schema`.
# Media keys an example may not carry (a multimodal collator folds the flat image keys in).
IMAGE_KEYS = (
    *FLAT_IMAGE_KEYS.values(),
    "negative_images",
    "image",
    "images",
    "video",
    "videos",
    "query_video",
    "positive_video",
)
# The keys of a multimodal input dict (``{"text": ..., "image": ...}``).
INPUT_KEYS = ("text", "image", "video", "fps", "placement", "trailing_newline")
# Where an input's vision blocks go (the authors' ``visual_token_placement``): on their own line
# before the text, or at the end of the text's last line.
PLACEMENTS = ("own_line", "inline_end")
# How an input with an image or video ends (the authors' ``trailing_newline``): one newline,
# or the text's own end.
TRAILING_NEWLINES = ("ensure_single", "preserve")
MEDIA_INPUT_KEYS = ("image", "images", "video", "videos")
IGNORE_INDEX = -100
# ``"target"`` left out of an example (its query's BToks generate the positive's input).
_ABSENT = object()


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


def check_input_dict(value: dict, name: str) -> None:
    """Check an input dict's keys and its ``placement`` / ``trailing_newline`` values.

    Raises:
        ExampleError: naming ``name``, for an unknown key or value.
    """
    unknown = sorted(set(value) - set(INPUT_KEYS))
    if unknown:
        raise ExampleError(f"{name}: unknown keys {unknown} in an input dict; known keys: {list(INPUT_KEYS)}")
    for key, allowed in (("placement", PLACEMENTS), ("trailing_newline", TRAILING_NEWLINES)):
        if key in value and value[key] not in allowed:
            raise ExampleError(f"{name}: {key} must be one of {list(allowed)}, got {describe_value(value[key])}")


def check_generation(example: dict) -> tuple[str, object]:
    """``(target_side, the explicit target)`` of an example dict, checked as the module
    docstring says (``target_side`` one of :data:`TARGET_SIDES`, default ``"positive"``;
    ``"target"`` absent, None / ``""`` or a str, consistent with the side; ``source`` a str).

    Returns:
        the side, and ``"target"``: a non-empty str, None (no target for the query's BToks)
        or a private marker for "absent" (they generate the positive's input).

    Raises:
        ValueError: ``"field 'NAME': what is wrong"`` (callers add where the example is).
    """
    if "source" in example and not isinstance(example["source"], str):
        raise ValueError(
            f"field 'source': must be a str naming the data source, got {describe_value(example['source'])}"
        )
    side = example.get("target_side", "positive")
    if not isinstance(side, str) or side not in TARGET_SIDES:
        raise ValueError(f"field 'target_side': must be one of {list(TARGET_SIDES)}, got {describe_value(side)}")
    if "target" not in example:
        return side, _ABSENT
    target = example["target"]
    if target is not None and not isinstance(target, str):
        raise ValueError(
            "field 'target': a target must be a str or None (targets given as text are text only, no image or "
            f"video), got {describe_value(target)}"
        )
    target = target or None
    if target is not None and side in ("query", "none"):
        raise ValueError(
            f"field 'target': gives the text the query's BToks generate, but target_side {side!r} has the query's "
            "BToks generate nothing; drop 'target' or use target_side 'positive' or 'both'"
        )
    if target is None and side == "both":
        raise ValueError(
            "field 'target': is empty, but target_side 'both' has the query's BToks generate a target; drop "
            "'target' (they generate the positive) or use target_side 'query'"
        )
    return side, target


@dataclass
class Target:
    """A generative target, placed after a sequence's K BToks.

    Attributes:
        ids: ``prefix + body + suffix`` token ids (an input's vision placeholders expanded).
        labels: one per id: the id where it is scored, ``IGNORE_INDEX`` where it is only
            seen (the prefix, image and video tokens).
        media: the processed image / video of the body, or None (text only).
    """

    ids: list[int]
    labels: list[int]
    media: Media | None = None

    @property
    def num_scored(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class EncodedExample:
    """Token ids of one example (no BToks).

    Attributes:
        query: the query ids (image / video placeholders expanded).
        candidates: the positive's ids, then each hard negative's.
        query_target: the target after the query's BToks (the positive side), or None.
        positive_target: the target after the positive's BToks (the query side), or None.
        query_media: the processed image / video of the query, or None (text only).
        candidate_media: the processed media of each candidate, or None when all are text.
    """

    query: list[int]
    candidates: list[list[int]]
    query_target: Target | None = None
    positive_target: Target | None = None
    query_media: Media | None = None
    candidate_media: list[Media | None] | None = None

    def media(self) -> list[Media | None]:
        """The media of the query, then of each candidate (None: text only)."""
        return [self.query_media] + (self.candidate_media or [None] * len(self.candidates))

    def targets(self) -> list[Target | None]:
        """The target of the query, then of each candidate (negatives: None)."""
        return [self.query_target, self.positive_target] + [None] * (len(self.candidates) - 1)

    def without_targets(self) -> EncodedExample:
        """The same example with no target anywhere."""
        return replace(self, query_target=None, positive_target=None)


@dataclass
class _Fields:
    """The validated fields of one example (see :meth:`BTokCollator._check_example`)."""

    query: object
    positive: object
    negatives: list
    side: str
    target: object  # _ABSENT, None or a non-empty str (the query's BToks' explicit text)


class BTokCollator:
    """Tokenises and packs BTok batches; picklable, no model inside.

    Args:
        tokenizer: a transformers tokenizer holding the BTok tokens.
        btok_ids: the K BTok ids appended after every input.
        target_prefix, target_suffix: the target wrapping (see the module docstring).
        max_length: the longest sequence accepted (input + K [+ target]), or None.
        limit_name: how error messages name that limit (e.g. ``"max_length=512"``).
        with_targets: collate targets by default; False (generative weight 0) leaves them out
            entirely. A call's ``with_targets=`` overrides it for that batch.
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

    @property
    def unscored_ids(self) -> frozenset[int]:
        """Ids a target shows but never scores (a multimodal collator's vision tokens)."""
        return frozenset()

    def __call__(self, examples: Sequence[dict], with_targets: bool | None = None) -> BTokBatch:
        """Pack ``examples`` into one :class:`~btok_model.embedder.packed_batch.BTokBatch`.

        Args:
            examples: training example dicts (see the module docstring).
            with_targets: collate the targets; None: this collator's ``with_targets``.

        Returns:
            the batch: ``input_ids`` int64 ``[1, T]``; ``position_ids`` int64 ``[1, T]``
            (restarting at 0 per sequence); ``btok_layout`` a CPU
            :class:`~btok_kernels.CondensationLayout`; ``labels`` int64 ``[1, T]`` (-100 except
            scored target tokens, unshifted as in transformers); ``positive_index`` int64
            ``[Nq]`` (``i``: the positives are the first Nq candidates); ``num_target_tokens``
            (scored target tokens).
        """
        return self.pack(self.encode_examples(examples, with_targets))

    # -- tokenisation and validation ------------------------------------------------------
    def encode_examples(self, examples: Sequence[dict], with_targets: bool | None = None) -> list[EncodedExample]:
        """Validate and tokenise training examples (no BToks added); ``with_targets`` as in :meth:`__call__`."""
        if isinstance(examples, dict) or not isinstance(examples, Sequence) or len(examples) == 0:
            raise ExampleError(f"examples must be a non-empty list of dicts, got {describe_value(examples)}")
        fields = [self._check_example(i, ex) for i, ex in enumerate(examples)]
        n = len(fields)
        query_where = [(i, "query") for i in range(n)]
        query_prompts, query_media = self._prompts([f.query for f in fields], query_where)
        queries = self._prompt_ids(query_prompts, query_media, query_where)
        cand_values, cand_where = [], []
        for i, f in enumerate(fields):
            cand_values += [f.positive, *f.negatives]
            cand_where += [(i, "positive")] + [(i, f"negatives[{j}]") for j in range(len(f.negatives))]
        cand_prompts, cand_media = self._prompts(cand_values, cand_where)
        cand_ids = self._prompt_ids(cand_prompts, cand_media, cand_where)
        first = [0] * n  # where each example's positive sits among the candidates
        for i in range(1, n):
            first[i] = first[i - 1] + 1 + len(fields[i - 1].negatives)
        with_targets = self.with_targets if with_targets is None else with_targets
        query_targets, positive_targets = [None] * n, [None] * n
        if with_targets:
            query_targets, positive_targets = self._targets(
                fields, (query_prompts, query_media), [(cand_prompts[c], cand_media[c]) for c in first]
            )
        encoded = []
        for i, f in enumerate(fields):
            own = slice(first[i], first[i] + 1 + len(f.negatives))
            media = cand_media[own]
            encoded.append(
                EncodedExample(
                    query=queries[i],
                    candidates=cand_ids[own],
                    query_target=query_targets[i],
                    positive_target=positive_targets[i],
                    query_media=query_media[i],
                    candidate_media=media if any(m is not None for m in media) else None,
                )
            )
        return encoded

    def _targets(self, fields: list[_Fields], queries: tuple[list, list], positives: list[tuple]) -> tuple[list, list]:
        """``(targets after the queries' BToks, targets after the positives' BToks)``, None
        where an example has none.

        Args:
            fields: the examples' validated fields.
            queries: ``(prompts, media)`` of the queries.
            positives: ``(prompt, media)`` of each example's positive.
        """
        n = len(fields)
        query_targets, positive_targets = [None] * n, [None] * n
        # One tokenisation (no special tokens) for every body: (slot list, example, field, prompt, media)
        bodies = []
        for i, f in enumerate(fields):
            if f.side in ("positive", "both") and f.target is not None:
                if f.target is _ABSENT:
                    bodies.append((query_targets, i, "positive", *positives[i]))
                else:
                    bodies.append((query_targets, i, "target", f.target, None))
            if f.side in ("query", "both"):
                bodies.append((positive_targets, i, "query", queries[0][i], queries[1][i]))
        where = [(i, field) for _, i, field, _, _ in bodies]
        ids = self._prompt_ids([b[3] for b in bodies], [b[4] for b in bodies], where, special_tokens=False)
        for (slots, i, field, _, media), body in zip(bodies, ids):
            target = self._target(body, media)
            if target.num_scored == 0:
                raise ExampleError(f"example {i}, field {field!r}: the target has no tokens to score")
            slots[i] = target
        return query_targets, positive_targets

    def _target(self, body: list[int], media: Media | None) -> Target:
        """``prefix + body + suffix`` with its labels (the wrapping and what is scored: docs/api.md)."""
        ids = self.prefix_ids + body + self.suffix_ids
        never = self.unscored_ids
        labels = [IGNORE_INDEX if j < self.unscored or t in never else t for j, t in enumerate(ids)]
        return Target(ids, labels, media)

    def _check_example(self, i: int, ex) -> _Fields:
        """The fields of example ``i``, validated (the target rules: docs/api.md, ``model.collate``)."""
        if not isinstance(ex, dict):
            raise ExampleError(f"example {i} must be a dict with 'query' and 'positive', got {describe_value(ex)}")
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
            raise ExampleError(
                f"example {i}, field 'negatives': must be a list of texts, got {describe_value(negatives)}"
            )
        try:
            side, target = check_generation(ex)
        except ValueError as err:
            raise ExampleError(f"example {i}, {err}") from None
        return _Fields(ex["query"], ex["positive"], list(negatives), side, target)

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
            raise ExampleError(f"texts must be a list of str (wrap a single text: [text]), got {describe_value(texts)}")
        where = [(i, None) for i in range(len(texts))]
        ids, media = self._encode_inputs(list(texts), where)
        for (i, _), seq in zip(where, ids):
            self._check_length(len(seq) + self.num_btoks, i, None, "the text + K BToks")
        return [seq + self.btok_ids for seq in ids], media

    def _encode_inputs(
        self, values: list, where: list[tuple[int, str | None]]
    ) -> tuple[list[list[int]], list[Media | None]]:
        """Ids of query/candidate inputs with the tokenizer's special tokens, and their media."""
        prompts, media = self._prompts(values, where)
        return self._prompt_ids(prompts, media, where), media

    def _prompts(self, values: list, where: list[tuple[int, str | None]]) -> tuple[list[str], list[Media | None]]:
        """The text each input is tokenised from, and its processed media (all None here:
        this collator takes texts, or ``{"text": ...}`` dicts without media)."""
        return [self._input_text(value, input_name(i, field)) for value, (i, field) in zip(values, where)], [
            None
        ] * len(values)

    def _prompt_ids(
        self,
        prompts: list[str],
        media: list[Media | None],
        where: list[tuple[int, str | None]],
        special_tokens: bool = True,
    ) -> list[list[int]]:
        """Ids of :meth:`_prompts`' texts, with or without the tokenizer's special tokens (a
        multimodal collator also expands the vision placeholders of ``media``)."""
        return self._text_ids(prompts, where, special_tokens)

    def _input_text(self, value, name: str) -> str:
        """The text of a text-only input, validated."""
        if isinstance(value, dict):
            if any(value.get(k) is not None for k in MEDIA_INPUT_KEYS):
                raise ExampleError(f"{name}: {_NO_IMAGES}")
            check_input_dict(value, name)
            value = value.get("text")
        if not isinstance(value, str):
            raise ExampleError(f"{name}: must be a str, got {describe_value(value)}")
        if not value.strip():
            raise ExampleError(f"{name}: empty text")
        return value

    def _text_ids(
        self, texts: list[str], where: list[tuple[int, str | None]], special_tokens: bool = True
    ) -> list[list[int]]:
        """Ids of validated texts (with or without the tokenizer's special tokens); no text may hold a BTok."""
        if not texts:
            return []
        ids = [list(x) for x in self.tokenizer(texts, add_special_tokens=special_tokens)["input_ids"]]
        btoks = set(self.btok_ids)
        for seq, (i, field) in zip(ids, where):
            if not seq:
                raise ExampleError(f"{input_name(i, field)}: the text has no tokens")
            if btoks.intersection(seq):
                raise ExampleError(f"{input_name(i, field)}: the text contains a BTok token ({self._btok_names()})")
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
                f"{input_name(i, field)}: {what} is {length} tokens, longer than {self.limit_name} "
                "(inputs are never truncated: shorten the text or raise the limit)"
            )

    # -- packing ----------------------------------------------------------------------------
    def pack(self, encoded: list[EncodedExample]) -> BTokBatch:
        """Pack tokenised examples into one batch (see :meth:`__call__`)."""
        k = self.num_btoks
        for i, ex in enumerate(encoded):
            self._check_length(len(ex.query) + k, i, "query", f"the query + {k} BToks")
            for j, cand in enumerate(ex.candidates):
                field = "positive" if j == 0 else f"negatives[{j - 1}]"
                self._check_length(len(cand) + k, i, field, f"the candidate + {k} BToks")
            if ex.query_target is not None:
                length = len(ex.query) + k + len(ex.query_target.ids)
                self._check_length(length, i, "target", f"query + {k} BToks + target")
            if ex.positive_target is not None:
                length = len(ex.candidates[0]) + k + len(ex.positive_target.ids)
                self._check_length(length, i, "positive", f"positive + {k} BToks + target (the query)")
        # Queries, then positives, then negatives; each with its own media and target.
        order = [(ex, 0) for ex in encoded] + [(ex, 1) for ex in encoded]
        order += [(ex, j) for ex in encoded for j in range(2, 1 + len(ex.candidates))]
        inputs = [ex.query if j == 0 else ex.candidates[j - 1] for ex, j in order]
        media = [ex.media()[j] for ex, j in order]
        targets = [ex.targets()[j] for ex, j in order]
        packed = self.pack_sequences([x + self.btok_ids for x in inputs], media, targets=targets)

        # Labels: each target's own, at its rows (right after its sequence's BToks).
        with_target = [s for s, t in enumerate(targets) if t is not None]
        labels = torch.full_like(packed["input_ids"], IGNORE_INDEX)
        if with_target:
            cu = packed["btok_layout"].host_cu_seqlens
            starts = torch.tensor([cu[s] + len(inputs[s]) + k for s in with_target], dtype=torch.long)
            lens = torch.tensor([len(targets[s].ids) for s in with_target], dtype=torch.long)
            values = list(chain.from_iterable(targets[s].labels for s in with_target))
            labels[0, concat_ranges(starts, lens)] = torch.tensor(values, dtype=torch.long)
        return BTokBatch(
            **packed,
            labels=labels,
            positive_index=torch.arange(len(encoded)),
            num_target_tokens=sum(targets[s].num_scored for s in with_target),
        )

    def pack_sequences(
        self, sequences: list[list[int]], media: list | None = None, *, targets: list[Target | None] | None = None
    ) -> dict:
        """Pack ``[input | BToks]`` sequences, each with its target after it, into one row.

        Args:
            sequences: ids of each ``[input | BToks]``, as :meth:`tokenize` /
                :meth:`encode_for_embedding` give them (the same as :meth:`pad_sequences` takes).
            media: the media of each input (None entries: text only), or None; a text-only
                collator accepts only None entries (and targets without media).
            targets: the target of each sequence (None: none), or None for no targets at all.

        Returns:
            dict with ``input_ids`` / ``position_ids`` int64 ``[1, T]`` and ``btok_layout``
            (CPU; sequence ``s``'s BToks at ``cu_seqlens[s] + btok_start[s] + 0..K-1``).
        """
        inputs = self._inputs_of(sequences, media, "pack_sequences")
        _check_text_only(media)
        _check_text_only([t.media for t in targets or [] if t is not None])
        return self._pack_ids(inputs, targets)

    def _inputs_of(self, sequences: list[list[int]], media, caller: str) -> list[list[int]]:
        """The inputs of ``[input | BToks]`` sequences (their BToks cut off).

        In btok 0.1 ``pack_sequences`` took the inputs without their BToks (and its targets
        as the second argument): no input holds a BTok, so sequences none of which ends with
        the K BToks are such inputs, taken with a ``DeprecationWarning``.

        Raises:
            TypeError: targets passed as the second (``media``) argument.
            ValueError: some sequences end with the K BToks and some do not.
        """
        if media is not None and any(isinstance(m, Target) for m in media):
            raise TypeError(f"{caller}(sequences, media, targets=...): targets are a keyword argument now")
        k = self.num_btoks
        if not k:
            return sequences
        ending = [list(seq[-k:]) == self.btok_ids for seq in sequences]
        if all(ending):
            return [seq[:-k] for seq in sequences]
        if any(ending):
            bad = ending.index(False)
            raise ValueError(
                f"{caller}: sequence {bad} does not end with the {k} BToks ([input | BToks], as tokenize gives it)"
            )
        warn_deprecated(
            f"{caller} takes [input | BToks] sequences (as collator.tokenize gives them); inputs without their BToks "
            "are deprecated and will be refused in the next release"
        )
        return sequences

    def _pack_ids(self, inputs: list[list[int]], targets: list[Target | None] | None) -> dict:
        """:meth:`pack_sequences`' ids (of the inputs without BToks), layout and text positions
        (``0, 1, ...`` per sequence: a target starts at its input's length + K)."""
        target_ids = [t.ids if t is not None else [] for t in targets or [None] * len(inputs)]
        k = self.num_btoks
        input_lens = [len(x) for x in inputs]
        layout = CondensationLayout.from_lengths(input_lens, k, [len(t) for t in target_ids])
        ids = list(chain.from_iterable(chain(x, self.btok_ids, t) for x, t in zip(inputs, target_ids)))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long)[None],
            "position_ids": self._position_ids(layout),
            "btok_layout": layout,
        }

    def pad_sequences(self, sequences: list[list[int]], media: list | None = None) -> dict:
        """Right-pad ``[input | BToks]`` sequences into ``[B, S]``.

        Args:
            sequences: ids of each ``[input | BToks]``, as :meth:`tokenize` /
                :meth:`encode_for_embedding` give them (the same as :meth:`pack_sequences` takes).
            media: as in :meth:`pack_sequences`.

        Returns:
            dict with ``input_ids``, ``attention_mask`` and ``position_ids`` int64 ``[B, S]``
            (row ``i``'s BToks are its last K real tokens).
        """
        _check_text_only(media)
        lens = torch.tensor([len(s) for s in sequences], dtype=torch.long)
        width = int(lens.max())
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        positions = torch.arange(width).expand(len(sequences), width)
        mask = positions < lens[:, None]
        input_ids[mask] = torch.tensor(list(chain.from_iterable(sequences)), dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": mask.long(), "position_ids": positions.clone()}

    def _position_ids(self, layout: CondensationLayout) -> torch.Tensor:
        """int64 ``[1, T]``: 0, 1, ... within every packed sequence (a target starts at its
        sequence's token count before it: input + K)."""
        lens = torch.tensor(layout.seqlens, dtype=torch.long)
        return concat_ranges(torch.zeros_like(lens), lens)[None]


_NO_IMAGES = (
    "images and videos need a multimodal backbone (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) with its processor; this BTok "
    "model is text-only"
)


def _check_text_only(media: list | None) -> None:
    if media is not None and any(m is not None for m in media):
        raise ValueError("this collator is text-only: it cannot pack images or videos")


def input_name(i: int, field: str | None) -> str:
    """How error messages name an input: ``text i`` (to embed) or ``example i, field 'FIELD'``."""
    return f"text {i}" if field is None else f"example {i}, field {field!r}"


def describe_value(value) -> str:
    """A value's type and (short) repr, for error messages."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"
