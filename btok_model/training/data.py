"""Training data: sources (JSONL files, MMEB-train subsets) mixed by weight.

**JSONL**, one example per line::

    {"query": str, "positive": str, "negatives": [str, ...]?, "target": str | null?,
     "target_side": "positive" | "query" | "both" | "none"?, "source": str?,
     "query_image": path?, "positive_image": path?}

``query`` and ``positive`` may be left out only when the matching image is given. Image
paths are relative to the file and must exist (the images themselves are read by a
multimodal collator; a text-only model refuses them). ``target`` follows
:class:`~btok_model.embedder.collate.BTokCollator`: absent means the positive's text, null
or ``""`` means no generative target for that example; ``target_side`` (whose BToks
generate whose text) and ``source`` (the data source's name) follow it too. Anything else --
a line that is not JSON, a missing or empty field, an unknown field, an image that does not
exist, a ``target_side`` that is not one of the four or contradicts ``target`` -- raises a
:class:`~btok_model.datasets.DataError` naming the file and line.

**MMEB-train** in its parquet layout or the authors' Lance repack
(:mod:`btok_model.datasets.mmeb_train`): a root is its 20 subsets, each a source with the
authors' weight and generation side.

**Sources** (:func:`parse_data_spec`, the ``--train-data`` syntax)::

    a.jsonl[:W]          a JSONL file
    ROOT[:W]             an MMEB-train root: all 20 subsets, weighted as the authors weight them;
                         with W, the subsets together weigh W (split in the authors' proportions)
    ROOT/Subset[:W]      one subset (default weight: the authors')

A weight is a source's expected share of the training examples (the authors' sampler draws
each block's source with probability weight / sum of weights); with no weight anywhere (JSONL
files only) each source weighs its size. Each example of :class:`MixedDataset` carries
``"source"`` (the source's name: the subset, or the file as given) and, when the source has
one, ``"target_side"`` (whose text the other side's BToks generate: ``positive``, ``query``,
``both`` or ``none``; the MMEB-train subsets' defaults are the authors', ``--target-side
NAME=SIDE`` changes them; a JSONL line's own ``target_side`` or ``target`` wins over its
file's: a line with an explicit ``target`` keeps it, whatever its file's side).

The order -- which examples an epoch holds, shuffled, or in single-source blocks -- is
:meth:`MixedDataset.sampler` (:mod:`.sampler`): a function of the seed and the epoch, so
every rank and a resumed run see the same examples.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, replace

import torch

from ..datasets.jsonl import DataError, Record, read_jsonl
from ..datasets.mmeb_train import DEFAULT_SPLIT, SUBSETS, MmebTrainSubset, find_layout
from ..embedder.collate import TARGET_SIDES, check_generation
from .sampler import MixtureSampler, SourceBlockSampler

__all__ = [
    "DataSource",
    "MixedDataset",
    "check_sources",
    "load_examples",
    "parse_data_spec",
    "parse_target_side",
    "with_target_sides",
]

TRAIN_KEYS = {"query", "positive", "negatives", "target", "target_side", "source", "query_image", "positive_image"}


def _example(record: Record) -> dict:
    record.check_keys(TRAIN_KEYS)
    example = {}
    for text_key, image_key in (("query", "query_image"), ("positive", "positive_image")):
        image = record.image(image_key)
        text = record.text(text_key, required=image is None)
        if text is not None:
            example[text_key] = text
        if image is not None:
            example[image_key] = image
    negatives = record.text_list("negatives")
    if negatives:
        example["negatives"] = negatives
    if "target" in record.data:
        target = record.data["target"]
        if target is not None and not isinstance(target, str):
            raise record.error(f"field 'target' must be a string or null, got {type(target).__name__}")
        example["target"] = target
    example.update({key: record.data[key] for key in ("target_side", "source") if key in record.data})
    try:  # the collator's rules, checked here so that a bad line fails before training starts
        check_generation(example)
    except ValueError as err:
        raise record.error(str(err)) from None
    return example


def load_examples(path: str | os.PathLike) -> list[dict]:
    """Every example of a JSONL file, validated (see the module docstring).

    Raises:
        DataError: the first bad line, as ``FILE:LINE: what is wrong``; or an empty file.
    """
    examples = [_example(record) for record in read_jsonl(path)]
    if not examples:
        raise DataError(f"{os.fspath(path)}: no examples")
    return examples


@dataclass(frozen=True)
class DataSource:
    """One training source and its mixing weight.

    Attributes:
        path: the JSONL file, or the MMEB-train root of ``subset``.
        weight: its weight (None: a JSONL file weighed by its size; see the module docstring).
        subset: the MMEB-train subset (None: ``path`` is a JSONL file).
        target_side: the generation side of its examples (None: the collator's default).
        split: the MMEB-train split read.
        image_root: where the parquet rows' image paths are relative to (None: the root).
    """

    path: str
    weight: float | None = None
    subset: str | None = None
    target_side: str | None = None
    split: str = DEFAULT_SPLIT
    image_root: str | None = None

    @property
    def name(self) -> str:
        """How examples and ``--target-side`` name the source: the subset, or the file as given."""
        return self.subset if self.subset is not None else self.path

    def load(self):
        """Its examples: a list of dicts (JSONL) or an :class:`~btok_model.datasets.MmebTrainSubset`."""
        if self.subset is None:
            return load_examples(self.path)
        return MmebTrainSubset(self.path, self.subset, split=self.split, image_root=self.image_root)


def parse_data_spec(spec: str, *, split: str = DEFAULT_SPLIT, image_root: str | None = None) -> list[DataSource]:
    """The sources of one ``--train-data`` entry (see the module docstring for the syntax).

    Args:
        spec: ``PATH`` or ``PATH:WEIGHT`` (the weight a number > 0).
        split: the MMEB-train split to read.
        image_root: where MMEB-train parquet rows' image paths are relative to (None: the root).

    Raises:
        ValueError: a bad weight.
        DataError: a folder that is not an MMEB-train root, or a root missing subsets.
    """
    path, weight = _split_weight(spec)
    mmeb = {"split": split, "image_root": image_root}
    parent, base = os.path.split(os.path.normpath(path))
    parent = parent or os.curdir
    if base in SUBSETS and _is_mmeb_root(parent, split):
        if find_layout(parent, base, split) is None:
            raise DataError(f"{path}: the MMEB-train root {parent} has no subset {base} (split {split!r})")
        defaults = SUBSETS[base]
        return [DataSource(parent, weight or defaults.weight, base, defaults.target_side, **mmeb)]
    if not os.path.isdir(path):
        return [DataSource(path, weight)]
    layouts = {name: find_layout(path, name, split) for name in SUBSETS}
    if not any(layouts.values()):
        raise DataError(
            f"{path}: a folder, not a JSONL file or an MMEB-train root (its layouts: "
            f"{os.path.join(path, '<Subset>', split + '-*.parquet')} or "
            f"{os.path.join(path, 'data', '<Subset>', split + '.lance')})"
        )
    missing = sorted(name for name, layout in layouts.items() if layout is None)
    if missing:
        raise DataError(
            f"{path}: an MMEB-train root without subset(s) {missing} (split {split!r}); give the subsets it has one "
            f"by one, as {os.path.join(path, '<Subset>')}[:WEIGHT]"
        )
    scale = 1.0 if weight is None else weight / sum(s.weight for s in SUBSETS.values())
    return [DataSource(path, s.weight * scale, name, s.target_side, **mmeb) for name, s in SUBSETS.items()]


def _split_weight(spec: str) -> tuple[str, float | None]:
    """``"path:weight"`` -> ``(path, weight)``; a colon not followed by a number is part of the path."""
    path, sep, weight = spec.rpartition(":")
    if not sep:
        return spec, None
    try:
        value = float(weight)
    except ValueError:
        return spec, None  # a colon inside the path, no weight
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"{spec!r}: the mixing weight must be a number > 0, got {weight!r}")
    return path, value


def _is_mmeb_root(path: str, split: str) -> bool:
    return os.path.isdir(path) and any(find_layout(path, name, split) for name in SUBSETS)


def parse_target_side(text: str) -> tuple[str, str]:
    """``"NAME=SIDE"`` (``--target-side``) -> ``(name, side)``.

    Raises:
        ValueError: no ``=``, or a side other than positive, query, both, none.
    """
    name, sep, side = text.rpartition("=")
    if not sep or not name:
        raise ValueError(f"{text!r}: expected SOURCE=SIDE, e.g. VisDial=none")
    if side not in TARGET_SIDES:
        raise ValueError(f"{text!r}: the side must be one of {list(TARGET_SIDES)}, got {side!r}")
    return name, side


def with_target_sides(sources: list[DataSource], sides: dict[str, str]) -> list[DataSource]:
    """``sources`` with the generation side of the named ones replaced.

    Raises:
        ValueError: a name that is not a source's, or a side that is not a known one.
    """
    names = [s.name for s in sources]
    unknown = sorted(set(sides) - set(names))
    if unknown:
        raise ValueError(f"--target-side names no training source {unknown}; the sources are {names}")
    bad = {n: side for n, side in sides.items() if side not in TARGET_SIDES}
    if bad:
        raise ValueError(f"target sides must be one of {list(TARGET_SIDES)}, got {bad}")
    return [replace(s, target_side=sides[s.name]) if s.name in sides else s for s in sources]


def check_sources(sources: list[DataSource]) -> None:
    """Check that ``sources`` can be mixed (before anything is read).

    Raises:
        ValueError: no source, a source named twice, or weights given to some JSONL files only.
    """
    if not sources:
        raise ValueError("no training data given")
    names = [s.name for s in sources]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"training source(s) {twice} given twice")
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not all(weighted):
        unweighted = [s.name for s in sources if s.weight is None]
        raise ValueError(
            "give a weight to every training file or to none (MMEB-train subsets always have one, the authors' "
            f"unless given): no weight for {unweighted}"
        )


class MixedDataset(torch.utils.data.Dataset):
    """Training sources side by side (see the module docstring); the epoch's order is :meth:`sampler`.

    Index ``i`` is example ``i - offsets[s]`` of source ``s`` (the sources in the given order).

    Args:
        sources: the sources; JSONL files either all with weights or none (MMEB-train subsets
            always have one).
        hard_negatives: keep the examples' ``negatives``; False drops them, so each query is
            scored against the in-batch candidates only, as the authors train (their loss
            leaves MMEB-train's negatives unused).

    Attributes:
        sources, sizes (examples per source), weights (each source's, resolved), offsets.

    Raises:
        DataError: a bad file or row (named).
        ValueError: no source, a source named twice, or weights given to some JSONL files only.
    """

    def __init__(self, sources: list[DataSource], hard_negatives: bool = True):
        check_sources(sources)
        self.sources = list(sources)
        self.hard_negatives = hard_negatives
        self.parts = [s.load() for s in self.sources]
        self.sizes = [len(part) for part in self.parts]
        self.weights = [float(s.weight) if s.weight is not None else float(n) for s, n in zip(sources, self.sizes)]
        self.offsets = [0]
        for n in self.sizes[:-1]:
            self.offsets.append(self.offsets[-1] + n)

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} of {len(self)}")
        s = bisect.bisect_right(self.offsets, i) - 1
        source = self.sources[s]
        example = dict(self.parts[s][i - self.offsets[s]])
        example["source"] = source.name
        if not self.hard_negatives:
            example.pop("negatives", None)
        if source.target_side is not None and "target" not in example:  # a line's own target wins
            example.setdefault("target_side", source.target_side)
        return example

    def sampler(
        self, seed: int, block_size: int | None = None, num_samples: int | None = None
    ) -> MixtureSampler | SourceBlockSampler:
        """The order of the training examples (see :mod:`.sampler`).

        Args:
            seed: with the epoch, decides the order.
            block_size: None: each epoch holds each source's share of ``num_samples``, shuffled;
                N: blocks of N examples from one source each, sources drawn by weight.
            num_samples: examples per epoch (default: the sources' total size).
        """
        if block_size is None:
            return MixtureSampler(self.sizes, self.weights, seed, num_samples)
        return SourceBlockSampler(self.sizes, self.weights, block_size, seed, num_samples)

    def describe(self) -> list[dict]:
        """One dict per source (name, path, examples, weight, probability, target side, ...), for run records."""
        total = sum(self.weights)
        out = []
        for source, part, size, weight in zip(self.sources, self.parts, self.sizes, self.weights):
            entry = {"name": source.name, "path": source.path, "examples": size, "weight": weight}
            entry["probability"] = weight / total
            entry["target_side"] = source.target_side
            if isinstance(part, MmebTrainSubset):
                entry.update(layout=part.layout, split=part.split, dropped_rows=part.dropped)
            out.append(entry)
        return out
