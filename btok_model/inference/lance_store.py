"""The Lance writer of ``python -m btok_model.embed``: embeddings stored block by block, resumable.

The output is a Lance dataset (a ``*.lance`` folder, ``pip install btok[lance]``) with columns

==============  ======================================================================
``id``          string: the row's id (:class:`~btok_model.inference.readers.Row`)
``row``         int64: its row number in the source
``vector``      ``fixed_size_list<float16|float32>[H]``: the L2-normalised embedding
                (LanceDB's default vector column name)
``vectors``     ``fixed_size_list<fixed_size_list<...>[H]>[K]``: a BTok model's K BTok
                vectors, each L2-normalised (``--multi-vector``, for MaxSim)
kept columns    as in the source (``--keep-columns``)
==============  ======================================================================

and the schema metadata key ``"btok"``: a JSON object with ``settings`` (the model, its weights'
fingerprint, the source and every option that changes a vector), and once the run has finished
``summary`` (rows written, rows skipped and which, blocks, the index).

**Resumable.** The source is cut into row blocks (``rows [b * block_size, (b + 1) * block_size)``).
Each block is appended as its own Lance fragment and committed on its own (a crash loses at most
the blocks being encoded), then recorded in ``<output>/_btok_blocks/<b>.json`` with the rows it
skipped. A rerun with the same settings skips the recorded blocks; rows of a block that was
committed but not recorded (a crash between the two) are deleted first, so no row is stored
twice. When every block is done the fragments are put back in row order (a metadata-only
commit: no data is copied), so a resumed run ends with the same rows in the same order as an
uninterrupted one. A rerun with other settings is refused (:class:`SettingsMismatch`).

**Sharded.** Under ``torchrun`` every rank appends its own blocks (Lance's appends commute; its
commit retries a conflict); rank 0 creates the dataset before and finishes it after the others.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from ..datasets.jsonl import DataError

__all__ = [
    "BLOCKS_DIR",
    "METADATA_KEY",
    "EmbeddingStore",
    "SettingsMismatch",
    "check_settings",
    "model_fingerprint",
    "output_schema",
    "read_metadata",
]

METADATA_KEY = "btok"
BLOCKS_DIR = "_btok_blocks"
FORMAT = 1
MAX_LISTED_SKIPS = 1000  # skipped rows named in the summary (all of them stay in the block records)


class SettingsMismatch(DataError):
    """The output holds embeddings made with other settings (the message names them)."""


def model_fingerprint(model) -> str:
    """A short digest of the model's weights (every parameter's name, shape and float64 sum,
    six significant digits): tells a retrained model in the same folder from the old one."""
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            digest.update(f"{name}{tuple(p.shape)}{float(p.sum(dtype=torch.float64)):.6e};".encode())
    return digest.hexdigest()[:16]


def _lance():
    try:
        import lance
    except ImportError as err:
        raise ImportError("writing Lance datasets needs pylance: pip install 'btok[lance]'") from err
    return lance


def output_schema(dim: int, dtype: str, num_vectors: int | None, kept: Sequence, metadata: dict):
    """The output's Arrow schema.

    Args:
        dim: H, the embedding size.
        dtype: ``"float16"`` or ``"float32"``, the stored vectors' type.
        num_vectors: K for a ``vectors`` column of K vectors per row, or None.
        kept: ``[(name, pyarrow type)]`` of the kept columns.
        metadata: the ``"btok"`` metadata (JSON-serialisable).
    """
    import pyarrow as pa

    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    value = pa.float16() if dtype == "float16" else pa.float32()
    fields = [pa.field("id", pa.string()), pa.field("row", pa.int64()), pa.field("vector", pa.list_(value, dim))]
    if num_vectors is not None:
        fields.append(pa.field("vectors", pa.list_(pa.list_(value, dim), num_vectors)))
    clash = [name for name, _ in kept if name in ("id", "row", "vector", "vectors")]
    if clash:
        raise DataError(f"--keep-columns {clash}: these names are the output's own columns")
    fields += [pa.field(name, kind) for name, kind in kept]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``"btok"`` metadata of an output (``{"format", "settings"[, "summary"]}``).

    Raises:
        DataError: ``path`` is not a Lance dataset written by ``embed``.
    """
    from ..datasets.lance_tables import open_lance

    return _metadata_of(open_lance(os.fspath(path)), os.fspath(path))


def _metadata_of(dataset, path: str) -> dict:
    raw = (dataset.schema.metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raise DataError(
            f"{path}: a Lance dataset, but not one written by python -m btok_model.embed (no btok metadata)"
        )
    return json.loads(raw)


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]


def _to_arrow_vectors(vectors: np.ndarray, dtype: str):
    """``[n, H]`` or ``[n, K, H]`` float array as (nested) fixed-size lists of ``dtype``."""
    import pyarrow as pa

    arr = np.ascontiguousarray(vectors, dtype=np.float16 if dtype == "float16" else np.float32)
    out = pa.array(arr.reshape(-1))
    for size in reversed(arr.shape[1:]):
        out = pa.FixedSizeListArray.from_arrays(out, size)
    return out


def check_settings(path: str | os.PathLike, settings: dict) -> None:
    """Refuse early (before a model loads) an existing output whose recorded settings differ
    from ``settings`` in any key ``settings`` has; nothing is checked when ``path`` is absent.

    Raises:
        SettingsMismatch: naming the differences.
        DataError: ``path`` exists and is not an ``embed`` output.
    """
    path = os.fspath(path)
    if not os.path.isdir(os.path.join(path, "_versions")):
        return
    from ..datasets.lance_tables import open_lance

    old = _metadata_of(open_lance(path), path).get("settings") or {}
    found = _differences({k: old.get(k) for k in settings}, settings)
    if found:
        raise SettingsMismatch(_mismatch(path, found))


def _mismatch(path: str, found: list[str]) -> str:
    return (
        f"{path} holds embeddings made with other settings ({'; '.join(found)}); rerun with the command that "
        "wrote it to resume, or write to another --output"
    )


class EmbeddingStore:
    """One output dataset being written (module docstring). Build it with :meth:`open`.

    Attributes:
        path: the ``*.lance`` folder.
        block_size: rows per block.
        dtype: the stored vectors' type.
        schema: the Arrow schema.
        done: block ids already recorded (those of other ranks too, as of opening).
    """

    def __init__(self, path: str, schema, block_size: int, dtype: str):
        self.path, self.schema, self.block_size, self.dtype = path, schema, block_size, dtype
        self.done: set[int] = set()

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, schema, *, block_size: int, dtype: str, prepare: bool = True):
        """Create the output, or reopen it to resume.

        Args:
            path: the ``*.lance`` folder.
            schema: :func:`output_schema`'s schema (its ``"btok"`` metadata holds the settings).
            block_size: rows per block.
            dtype: ``"float16"`` or ``"float32"``.
            prepare: create the dataset when absent and delete rows of unrecorded blocks (one
                process does this, rank 0, before the others open it with False).

        Raises:
            SettingsMismatch: the output exists with other settings (or another layout).
            DataError: ``path`` exists and is not an ``embed`` output.
        """
        lance = _lance()
        path = os.fspath(path)
        store = cls(path, schema, block_size, dtype)
        settings = json.loads(schema.metadata[METADATA_KEY.encode()])["settings"]
        exists = os.path.isdir(os.path.join(path, "_versions"))
        if not exists:
            if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
                raise DataError(f"{path}: exists and is not a Lance dataset; choose another --output")
            if not prepare:
                raise DataError(f"{path}: not created yet (rank 0 creates it first)")
            lance.write_dataset(schema.empty_table(), path, schema=schema)
        dataset = lance.dataset(path)
        old = _metadata_of(dataset, path)
        if old.get("settings") != settings:
            raise SettingsMismatch(_mismatch(path, _differences(old.get("settings") or {}, settings)))
        if dataset.schema.remove_metadata() != schema.remove_metadata():
            raise SettingsMismatch(f"{path}: its columns differ from this run's: {dataset.schema.remove_metadata()}")
        os.makedirs(os.path.join(path, BLOCKS_DIR), exist_ok=True)
        store.done = store.recorded_blocks()
        if prepare:
            store._drop_unrecorded(dataset)
        return store

    def recorded_blocks(self) -> set[int]:
        """Block ids with a record (committed and recorded)."""
        folder = os.path.join(self.path, BLOCKS_DIR)
        return {int(name[:-5]) for name in os.listdir(folder) if name.endswith(".json")}

    def _block_records(self) -> list[dict]:
        folder = os.path.join(self.path, BLOCKS_DIR)
        out = []
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json"):
                with open(os.path.join(folder, name)) as f:
                    out.append(json.load(f))
        return out

    def _drop_unrecorded(self, dataset) -> None:
        """Delete the rows of blocks that were committed but not recorded (a crash in between)."""
        rows = dataset.to_table(columns=["row"]).column("row").to_numpy()
        if not len(rows):
            return
        blocks = np.unique(rows // self.block_size)
        stray = [int(b) for b in blocks if int(b) not in self.done]
        if stray:
            size = self.block_size
            dataset.delete(" OR ".join(f"(row >= {b * size} AND row < {(b + 1) * size})" for b in stray))

    # -- writing ----------------------------------------------------------------------------
    def write_block(self, block: int, rows: Sequence, vectors, multi=None, skipped: Sequence = ()) -> None:
        """Append one block's rows, commit, record the block.

        Args:
            block: the block id.
            rows: its good :class:`~btok_model.inference.readers.Row` s, in row order.
            vectors: fp32 ``[len(rows), H]`` (tensor or array).
            multi: fp32 ``[len(rows), K, H]`` for the ``vectors`` column, or None.
            skipped: its :class:`~btok_model.inference.readers.BadRow` s.
        """
        import pyarrow as pa

        lance = _lance()
        from lance.fragment import write_fragments

        if len(rows):
            columns = {
                "id": pa.array([r.id for r in rows], pa.string()),
                "row": pa.array([r.row for r in rows], pa.int64()),
                "vector": _to_arrow_vectors(np.asarray(vectors), self.dtype),
            }
            if "vectors" in self.schema.names:
                if multi is None:
                    raise ValueError("this output stores the K vectors of each row: pass multi")
                columns["vectors"] = _to_arrow_vectors(np.asarray(multi), self.dtype)
            for name in self.schema.names[len(columns) :]:
                columns[name] = pa.array([r.keep.get(name) for r in rows], self.schema.field(name).type)
            table = pa.table(columns, schema=self.schema)
            fragments = write_fragments(table, self.path, schema=self.schema)
            version = lance.dataset(self.path).version
            lance.LanceDataset.commit(self.path, lance.LanceOperation.Append(fragments), read_version=version)
        lo = block * self.block_size
        record = {
            "block": block,
            "rows": [lo, lo + self.block_size],
            "written": len(rows),
            "skipped": [b.to_dict() for b in skipped],
        }
        final = os.path.join(self.path, BLOCKS_DIR, f"{block:09d}.json")
        with open(final + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(final + ".tmp", final)  # the block is done only once its record is complete
        self.done.add(block)

    def finish(self, num_blocks: int, extra: dict | None = None) -> dict:
        """Put the fragments in row order and write the summary (one process, after every block).

        Args:
            num_blocks: the blocks the source makes (all must be recorded).
            extra: more summary entries (e.g. timings).

        Returns:
            The summary: ``rows``, ``skipped`` (count), ``skipped_rows`` (the first
            :data:`MAX_LISTED_SKIPS`), ``blocks``.
        """
        lance = _lance()
        records = self._block_records()
        missing = sorted(set(range(num_blocks)) - {r["block"] for r in records})
        if missing:
            raise RuntimeError(f"{self.path}: blocks {missing[:10]} are not written yet; rerun the command to finish")
        dataset = lance.dataset(self.path)
        fragments = dataset.get_fragments()

        def first_row(fragment) -> int:
            return fragment.to_table(columns=["row"], limit=1).column("row")[0].as_py()

        ordered = sorted(fragments, key=first_row)
        if [f.fragment_id for f in ordered] != [f.fragment_id for f in fragments]:
            operation = lance.LanceOperation.Overwrite(dataset.schema, [f.metadata for f in ordered])
            dataset = lance.LanceDataset.commit(self.path, operation, read_version=dataset.version)
        skipped = [s for r in records for s in r["skipped"]]
        summary = {
            "rows": dataset.count_rows(),
            "skipped": len(skipped),
            "skipped_rows": skipped[:MAX_LISTED_SKIPS],
            "blocks": num_blocks,
            **(extra or {}),
        }
        metadata = _metadata_of(dataset, self.path)
        metadata["summary"] = summary
        dataset.update_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})
        return summary
