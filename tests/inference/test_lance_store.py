"""The Lance writer: blocks in any order end in row order, a crash between commit and record
loses no row and stores none twice, other settings are refused, K vectors round-trip."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from btok_model.inference.lance_store import (
    BLOCKS_DIR,
    EmbeddingStore,
    SettingsMismatch,
    output_schema,
    read_metadata,
)
from btok_model.inference.readers import BadRow, Row

lance = pytest.importorskip("lance")
pa = pytest.importorskip("pyarrow")

H, K, BLOCK = 8, 3, 4
SETTINGS = {"model": "m", "weights": "abc", "dtype": "float32"}
KEPT = (("lang", pa.string()),)


def _schema(settings=SETTINGS, dtype="float32", k=K, kept=KEPT):
    return output_schema(H, dtype, k, list(kept), {"format": 1, "settings": settings})


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, H)).astype(np.float32)
    multi = rng.standard_normal((n, K, H)).astype(np.float32)
    rows = [Row(i, f"id{i}", None, {"lang": "en" if i % 2 else "fr"}) for i in range(n)]
    return rows, vectors, multi


def _write(store, block, rows, vectors, multi, skipped=()):
    lo, hi = block * BLOCK, (block + 1) * BLOCK
    keep = [i for i in range(lo, min(hi, len(rows))) if i not in {s.row for s in skipped}]
    store.write_block(block, [rows[i] for i in keep], vectors[keep], multi[keep], skipped)


def test_blocks_in_any_order_end_in_row_order_and_round_trip(tmp_path):
    path = str(tmp_path / "o.lance")
    rows, vectors, multi = _data(10)
    store = EmbeddingStore.open(path, _schema(), block_size=BLOCK, dtype="float32")
    skipped = [BadRow(5, "c.jsonl:6", "empty")]
    for b in (2, 0, 1):
        _write(store, b, rows, vectors, multi, skipped if b == 1 else ())
    summary = store.finish(3)
    assert summary["rows"] == 9 and summary["skipped"] == 1 and summary["skipped_rows"][0]["where"] == "c.jsonl:6"
    table = lance.dataset(path).to_table()
    kept = [i for i in range(10) if i != 5]
    assert table.column("row").to_pylist() == kept
    assert table.column("id").to_pylist() == [f"id{i}" for i in kept]
    assert table.column("lang").to_pylist() == [rows[i].keep["lang"] for i in kept]
    got = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(got, vectors[kept])
    got_multi = np.array(table.column("vectors").to_pylist(), dtype=np.float32)  # [n, K, H]
    np.testing.assert_array_equal(got_multi, multi[kept])
    assert read_metadata(path)["summary"]["skipped"] == 1


def test_float16_vectors(tmp_path):
    path = str(tmp_path / "o.lance")
    rows, vectors, _ = _data(4)
    store = EmbeddingStore.open(path, _schema(dtype="float16", k=None), block_size=BLOCK, dtype="float16")
    store.write_block(0, rows, vectors)
    store.finish(1)
    column = lance.dataset(path).to_table().column("vector")
    assert column.type == pa.list_(pa.float16(), H)
    np.testing.assert_array_equal(np.stack(column.to_numpy(zero_copy_only=False)), vectors.astype(np.float16))


def test_reopen_skips_recorded_blocks_and_drops_unrecorded_rows(tmp_path):
    """A crash after a block's commit but before its record: on reopening its rows go, so the
    rerun's copy is the only one."""
    path = str(tmp_path / "o.lance")
    rows, vectors, multi = _data(12)
    store = EmbeddingStore.open(path, _schema(), block_size=BLOCK, dtype="float32")
    _write(store, 0, rows, vectors, multi)
    _write(store, 1, rows, vectors, multi)
    os.remove(os.path.join(path, BLOCKS_DIR, f"{1:09d}.json"))  # committed, record lost
    assert lance.dataset(path).count_rows() == 8
    store = EmbeddingStore.open(path, _schema(), block_size=BLOCK, dtype="float32")
    assert store.done == {0}
    assert lance.dataset(path).to_table().column("row").to_pylist() == [0, 1, 2, 3]
    for b in (2, 1):
        _write(store, b, rows, vectors, multi)
    store.finish(3)
    fresh = str(tmp_path / "fresh.lance")
    other = EmbeddingStore.open(fresh, _schema(), block_size=BLOCK, dtype="float32")
    for b in range(3):
        _write(other, b, rows, vectors, multi)
    other.finish(3)
    assert lance.dataset(path).to_table().equals(lance.dataset(fresh).to_table())


def test_a_block_whose_rows_were_all_skipped_is_recorded(tmp_path):
    path = str(tmp_path / "o.lance")
    rows, vectors, multi = _data(8)
    store = EmbeddingStore.open(path, _schema(), block_size=BLOCK, dtype="float32")
    _write(store, 0, rows, vectors, multi)
    store.write_block(1, [], vectors[:0], multi[:0], [BadRow(r, f"c.jsonl:{r + 1}", "empty") for r in range(4, 8)])
    assert EmbeddingStore.open(path, _schema(), block_size=BLOCK, dtype="float32").done == {0, 1}
    summary = store.finish(2)
    assert summary["rows"] == 4 and summary["skipped"] == 4


def test_finish_refuses_missing_blocks(tmp_path):
    path = str(tmp_path / "o.lance")
    rows, vectors, multi = _data(8)
    store = EmbeddingStore.open(path, _schema(), block_size=BLOCK, dtype="float32")
    _write(store, 1, rows, vectors, multi)
    with pytest.raises(RuntimeError, match=r"blocks \[0\] are not written"):
        store.finish(2)


def test_other_settings_or_columns_are_refused(tmp_path):
    path = str(tmp_path / "o.lance")
    EmbeddingStore.open(path, _schema(), block_size=BLOCK, dtype="float32")
    with pytest.raises(SettingsMismatch, match=r"model: 'm' there, 'other' now"):
        EmbeddingStore.open(path, _schema(dict(SETTINGS, model="other")), block_size=BLOCK, dtype="float32")
    with pytest.raises(SettingsMismatch, match="columns differ"):
        EmbeddingStore.open(path, _schema(kept=()), block_size=BLOCK, dtype="float32")
    (tmp_path / "x.lance").mkdir()
    (tmp_path / "x.lance" / "file").write_text("mine")
    with pytest.raises(ValueError, match="not a Lance dataset"):
        EmbeddingStore.open(str(tmp_path / "x.lance"), _schema(), block_size=BLOCK, dtype="float32")
    lance.write_dataset(pa.table({"a": [1]}), str(tmp_path / "y.lance"))
    with pytest.raises(ValueError, match=r"not one written by python -m btok_model\.embed"):
        EmbeddingStore.open(str(tmp_path / "y.lance"), _schema(), block_size=BLOCK, dtype="float32")


def test_output_column_names_cannot_be_kept():
    with pytest.raises(ValueError, match=r"\['vector'\]"):
        _schema(kept=(("vector", pa.string()),))
    assert json.loads(_schema().metadata[b"btok"])["settings"] == SETTINGS
