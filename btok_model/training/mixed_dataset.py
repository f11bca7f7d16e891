"""Training data: sources (JSONL files, the authors' training sources) mixed by weight.

docs/training.md describes the data for users (the JSONL fields, the authors' sources, their
folders and weights). This module's contract:

- :func:`load_examples` reads a JSONL file, one example a line, to dicts as
  :class:`~btok_model.embedder.collate.BTokCollator` takes them (image paths relative to the file,
  checked to exist). A line that is not JSON, a missing, empty or unknown field, a missing image,
  or a ``target_side`` that is not one of the four or contradicts ``target`` raises a
  :class:`~btok_model.datasets.DataError` naming the file and line.
- :func:`parse_data_spec` turns one ``--train-data`` entry into :class:`DataSource` s::

      a.jsonl[:W]        a JSONL file
      DATA[:W]           a data root holding the authors' four folders: the whole mixture, 25 sources
      FOLDER[:W]         one family's folder (found by its layout): its sources
      FOLDER/NAME[:W]    one source of a family's folder

  Without W a source has the mixture's weight (:mod:`btok_model.datasets.catalog`); with W the
  entry's sources together weigh W, in the mixture's proportions. A missing folder is an error
  that names it.
- :class:`MixedDataset` holds the sources. A weight is a source's expected share of the examples
  (with no weight anywhere, each source weighs its size). Each example carries ``"source"`` and,
  when its source has one, ``"target_side"`` (a JSONL line's own ``target_side`` or ``target``
  wins over its file's). The order is :meth:`MixedDataset.sampler` (:mod:`.sampler`): a function
  of the seed and the epoch, so every rank and a resumed run see the same examples.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..datasets.catalog import (
    AUTHORS_V1_MIXTURE,
    FAMILY_FOLDERS,
    FAMILY_SOURCES,
    FAMILY_TITLES,
    Mixture,
    MixtureEntry,
    folder_family,
    open_source,
    source_available,
)
from ..datasets.jsonl import DataError, Record, read_jsonl
from ..datasets.mmeb_train import DEFAULT_SPLIT
from ..datasets.schema import (
    FLAT_IMAGE_KEYS,
    JSONL_KEYS,
    NEGATIVES,
    SOURCE,
    TARGET,
    TARGET_SIDE,
    TARGET_SIDES,
    make_input,
    read_side,
)
from ..embedder.collate import ExampleError, check_generation
from .bad_rows import BAD_ROWS_KEY, BadRow, decode_images
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


def _example(record: Record) -> dict:
    """A line's example (:mod:`btok_model.datasets.schema`), images kept under their flat keys."""
    record.check_keys(JSONL_KEYS)
    example = {}
    for field, image_key in FLAT_IMAGE_KEYS.items():
        text, image = read_side(record, field)
        if text is not None:
            example[field] = text
        if image is not None:
            example[image_key] = image
    negatives = _negatives(record)
    if negatives:
        example[NEGATIVES] = negatives
    if TARGET in record.data:
        target = record.data[TARGET]
        if target is not None and not isinstance(target, str):
            raise record.error(f"field 'target' must be a string or null, got {type(target).__name__}")
        example[TARGET] = target
    example.update({key: record.data[key] for key in (TARGET_SIDE, SOURCE) if key in record.data})
    try:  # the collator's rules, checked here so that a bad line fails before training starts
        check_generation(example)
    except ValueError as err:
        raise record.error(str(err)) from None
    return example


def _negatives(record: Record) -> list | None:
    """Field ``negatives``: texts, or ``{"text"?, "image"?}`` objects (an image path relative to
    the file, as ``python -m btok_model.mine`` writes image candidates) passed on as inputs."""
    if NEGATIVES not in record.data:
        return None
    value = record.data[NEGATIVES]
    if not isinstance(value, list):
        raise record.error(f"field 'negatives' must be a list of strings or objects, got {type(value).__name__}")
    negatives = []
    for i, item in enumerate(value):
        name = f"negatives[{i}]"
        if isinstance(item, str):
            negatives.append(record.check_text(item, name))
            continue
        if not isinstance(item, dict):
            raise record.error(f"{name} must be a string or an object with 'text'/'image', got {type(item).__name__}")
        unknown = sorted(set(item) - {"text", "image"})
        if unknown:
            raise record.error(f"{name} has unknown field(s) {unknown}; allowed: ['image', 'text']")
        image = None if item.get("image") is None else record.check_image(item["image"], f"{name}.image")
        text = None if item.get("text") is None else record.check_text(item["text"], f"{name}.text")
        if image is None and text is None:
            raise record.error(f"{name} has neither 'text' nor 'image'")
        negatives.append(make_input(text, image))
    return negatives


class JsonlExamples(list):
    """The examples of a JSONL file (a list of dicts) and where each is: :meth:`where`."""

    def __init__(self, examples: list[dict], wheres: list[str]):
        super().__init__(examples)
        self._wheres = wheres

    def where(self, i: int) -> str:
        """``FILE:LINE`` of example ``i`` (for messages)."""
        return self._wheres[i]


def load_examples(path: str | os.PathLike) -> JsonlExamples:
    """Every example of a JSONL file, validated (see the module docstring).

    Raises:
        DataError: the first bad line, as ``FILE:LINE: what is wrong``; or an empty file.
    """
    records = list(read_jsonl(path))
    examples = JsonlExamples([_example(record) for record in records], [record.where for record in records])
    if not examples:
        raise DataError(f"{os.fspath(path)}: no examples")
    return examples


@dataclass(frozen=True)
class DataSource:
    """One training source and its mixing weight.

    Attributes:
        path: the JSONL file, or the folder of ``subset``'s family (an MMEB-train root, the
            ViDoRe / VisRAG / ShareGPTVideo folder).
        weight: its weight (None: a JSONL file weighed by its size; see the module docstring).
        subset: the source's name in its family (an MMEB-train subset, ``colpali_train_set``,
            ``visrag-indomain``, a LLaVA-Hound source); None: ``path`` is a JSONL file.
        target_side: the generation side of its examples (None: the collator's default).
        split: the MMEB-train split read.
        image_root: where MMEB-train's parquet rows' image paths are relative to (None: the root).
        family: the reader of ``subset`` (:data:`~btok_model.datasets.catalog.FAMILIES`).
    """

    path: str
    weight: float | None = None
    subset: str | None = None
    target_side: str | None = None
    split: str = DEFAULT_SPLIT
    image_root: str | None = None
    family: str = "mmeb_train"

    @property
    def name(self) -> str:
        """How examples and ``--target-side`` name the source: the subset, or the file as given."""
        return self.subset if self.subset is not None else self.path

    def load(self):
        """Its examples: a list of dicts (JSONL) or its family's reader (a sequence of dicts)."""
        if self.subset is None:
            return load_examples(self.path)
        return open_source(self.family, self.path, self.subset, split=self.split, image_root=self.image_root)


def parse_data_spec(
    spec: str,
    *,
    split: str = DEFAULT_SPLIT,
    image_root: str | None = None,
    mixture: Mixture = AUTHORS_V1_MIXTURE,
) -> list[DataSource]:
    """The sources of one ``--train-data`` entry (see the module docstring for the syntax).

    Args:
        spec: ``PATH`` or ``PATH:WEIGHT`` (the weight a number > 0).
        split: the MMEB-train split to read.
        image_root: where MMEB-train parquet rows' image paths are relative to (None: the root).
        mixture: the weights and generation sides of the authors' sources
            (:data:`~btok_model.datasets.catalog.AUTHORS_V1_MIXTURE` or
            :data:`~btok_model.datasets.catalog.VLM2VEC_MIXTURE`).

    Raises:
        ValueError: a bad weight.
        DataError: a folder that is none of the layouts, or one missing sources (named).
    """
    path, weight = _split_weight(spec)
    parent, base = os.path.split(os.path.normpath(path))
    parent = parent or os.curdir
    family = folder_family(parent, split)
    if family is not None and base in FAMILY_SOURCES[family]:  # one source of a family's folder
        if not source_available(family, parent, base, split):
            _, title, what = FAMILY_TITLES[family]
            raise DataError(f"{path}: the {title} {parent} has no {what} {base} (split {split!r})")
        entry = _mixture_entry(mixture, base, path)
        return [_source(parent, entry, weight or entry.weight, split, image_root)]
    if not os.path.isdir(path):
        return [DataSource(path, weight)]
    family = folder_family(path, split)
    if family is not None:
        entries = _family_sources(path, family, mixture, split)
    else:
        entries = _data_root_sources(path, mixture, split)
    scale = 1.0 if weight is None else weight / sum(e.weight for _, e in entries)
    return [_source(root, e, e.weight * scale, split, image_root) for root, e in entries]


def _source(root: str, entry: MixtureEntry, weight: float, split: str, image_root: str | None) -> DataSource:
    mmeb = entry.family == "mmeb_train"
    return DataSource(
        root, weight, entry.name, entry.target_side, split, image_root if mmeb else None, family=entry.family
    )


def _mixture_entry(mixture: Mixture, name: str, path: str) -> MixtureEntry:
    try:
        return mixture.entry(name)
    except KeyError:
        raise DataError(f"{path}: {name} is not a source of the mixture {mixture.name}") from None


def _family_sources(root: str, family: str, mixture: Mixture, split: str) -> list[tuple[str, MixtureEntry]]:
    """``(folder, entry)`` of every source of a family's folder; all of them must be there."""
    entries = mixture.family(family)
    missing = [e.name for e in entries if not source_available(family, root, e.name, split)]
    if missing:
        article, title, what = FAMILY_TITLES[family]
        raise DataError(
            f"{root}: {article} {title} without {what}(s) {missing} (split {split!r}); give the {what}s it has one by one, "
            f"as {os.path.join(root, '<' + what.capitalize() + '>')}[:WEIGHT]"
        )
    return [(root, e) for e in entries]


def _data_root_sources(root: str, mixture: Mixture, split: str) -> list[tuple[str, MixtureEntry]]:
    """``(folder, entry)`` of every source of ``mixture`` under a data root holding its families' folders."""
    families = list(dict.fromkeys(e.family for e in mixture.entries))
    folders = {f: os.path.join(root, FAMILY_FOLDERS[f]) for f in families}
    present = {f: p for f, p in folders.items() if os.path.isdir(p)}
    if not present:
        raise DataError(
            f"{root}: a folder, not a JSONL file, a source's folder (MMEB-train: "
            f"{os.path.join(root, '<Subset>', split + '-*.parquet')} or "
            f"{os.path.join(root, 'data', '<Subset>', split + '.lance')}; ViDoRe / VisRAG: "
            f"{os.path.join(root, 'data', 'train.lance')} or data/train-*.parquet; ShareGPTVideo: "
            f"{os.path.join(root, 'data', 'video_instruction')}/... or video_instruction/...) or a data root holding "
            f"{sorted(FAMILY_FOLDERS[f] for f in families)}"
        )
    missing = [FAMILY_FOLDERS[f] for f in families if f not in present]
    if missing:
        raise DataError(
            f"{root}: a data root of the authors' mixture {mixture.name} without {missing} (each downloaded into "
            f"its folder under the root, as the authors' README does); add them, or give the folders it has "
            f"one by one: {' '.join(sorted(present.values()))}"
        )
    out = []
    for family, folder in present.items():
        found = folder_family(folder, split)
        if found != family:
            raise DataError(f"{folder}: not a {family} folder (its layout: {found or 'none btok reads'})")
        out += _family_sources(folder, family, mixture, split)
    return out


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
        max_redraws: how many draws in a row may fail to decode before a source is given up
            (a :class:`~btok_model.datasets.DataError`: its images are most likely not where they
            were looked for).

    An example is read with its images decoded (:func:`~btok_model.training.bad_rows.decode_images`);
    a row that cannot be decoded is replaced by another row of the same source, drawn from the
    index and the attempt alone (so every rank, worker and resumed run draws the same), and the
    example then carries the :class:`~btok_model.training.bad_rows.BadRow` records of the rows it
    replaces under ``"bad_rows"`` (the batch builder takes them off).

    Attributes:
        sources, sizes (examples per source), weights (each source's, resolved), offsets.

    Raises:
        DataError: a bad file or row (named).
        ValueError: no source, a source named twice, or weights given to some JSONL files only.
    """

    def __init__(self, sources: list[DataSource], hard_negatives: bool = True, max_redraws: int = 100):
        check_sources(sources)
        self.sources = list(sources)
        self.hard_negatives = hard_negatives
        self.max_redraws = max_redraws
        self.parts = [s.load() for s in self.sources]
        self.sizes = [len(part) for part in self.parts]
        self.weights = [float(s.weight) if s.weight is not None else float(n) for s, n in zip(sources, self.sizes)]
        self.offsets = [0]
        for n in self.sizes[:-1]:
            self.offsets.append(self.offsets[-1] + n)

    def __len__(self) -> int:
        return sum(self.sizes)

    @property
    def reads_lance(self) -> bool:
        """Whether reading an example may read a Lance table (a source in the Lance layout:
        MMEB-train, LLaVA-Hound, ViDoRe / VisRAG repacks)."""
        return any(getattr(part, "layout", None) == "lance" for part in self.parts)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} of {len(self)}")
        s = bisect.bisect_right(self.offsets, i) - 1
        source, j, bad = self.sources[s], i - self.offsets[s], []
        while True:
            where = self._where(s, j)
            try:
                example = dict(self.parts[s][j])
                if not self.hard_negatives:
                    example.pop(NEGATIVES, None)
                example = decode_images(example, where)
                break
            except (DataError, ExampleError) as err:
                message = str(err)
                if message.startswith(where):
                    message = message[len(where) :].lstrip(":, ")
                bad.append(BadRow(source.name, where, message))
            if len(bad) > self.max_redraws:
                raise DataError(
                    f"source {source.name}: {len(bad)} draws in a row could not be decoded, the last {bad[-1]}; "
                    "are its images where they were looked for?"
                )
            # The replacement depends on the index and the attempt only: ranks, workers and resumed runs agree.
            j = int(np.random.default_rng((i, len(bad))).integers(self.sizes[s]))
        if bad:
            example[BAD_ROWS_KEY] = bad
        example[SOURCE] = source.name
        if source.target_side is not None and TARGET not in example:  # a line's own target wins
            example.setdefault(TARGET_SIDE, source.target_side)
        return example

    def where(self, i: int) -> str:
        """Where example ``i`` is stored (``FILE: row N``, ``FILE:LINE``), for messages."""
        s = bisect.bisect_right(self.offsets, i) - 1
        return self._where(s, i - self.offsets[s])

    def _where(self, s: int, j: int) -> str:
        part = self.parts[s]
        return part.where(j) if hasattr(part, "where") else f"{self.sources[s].name}: example {j}"

    def sampler(
        self,
        seed: int,
        block_size: int | None = None,
        num_samples: int | None = None,
        *,
        mode: str = "strict",
        per_device: int | None = None,
        world_size: int = 1,
    ) -> MixtureSampler | SourceBlockSampler:
        """The order of the training examples (see :mod:`.sampler`).

        Args:
            seed: with the epoch, decides the order.
            block_size: None: each epoch holds each source's share of ``num_samples``, shuffled;
                N: blocks of N examples from one source each, sources drawn by weight.
            num_samples: examples per epoch (default: the sources' total size).
            mode, per_device, world_size: how blocks reach the ranks (``"strict"`` or the
                ``"authors"`` stride for ``per_device`` x ``world_size``; see :class:`.SourceBlockSampler`).
        """
        if block_size is None:
            return MixtureSampler(self.sizes, self.weights, seed, num_samples)
        return SourceBlockSampler(
            self.sizes,
            self.weights,
            block_size,
            seed,
            num_samples,
            mode=mode,
            per_device=per_device,
            world_size=world_size,
        )

    def describe(self) -> list[dict]:
        """One dict per source (name, path, examples, weight, probability, target side, ...), for run records."""
        total = sum(self.weights)
        out = []
        for source, part, size, weight in zip(self.sources, self.parts, self.sizes, self.weights):
            entry = {"name": source.name, "path": source.path, "examples": size, "weight": weight}
            entry["probability"] = weight / total
            entry["target_side"] = source.target_side
            if source.subset is not None:
                entry.update(family=source.family, layout=part.layout, files=list(part.files))
            if source.family == "mmeb_train" and source.subset is not None:
                entry.update(split=part.split, dropped_rows=part.dropped)
            out.append(entry)
        return out
