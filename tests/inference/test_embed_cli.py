"""``python -m btok_model.embed``: the output holds the engine's vectors; a stopped or killed run
resumes to the same dataset encoding only what was missing; other settings are refused; bad rows
stop the run (naming file and row) or are skipped and counted; two gloo processes equal one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from btok_model import BTokModel
from btok_model.embed import main
from btok_model.embedder.encode import encode
from btok_model.inference.lance_store import BLOCKS_DIR, EmbeddingStore, read_metadata
from tests.helpers.tiny import image, tiny_btok, tiny_vl_btok

lance = pytest.importorskip("lance")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ["cat", "dog", "tree", "river", "red fruit", "cold wind", "tall tower", "small bird", "old book", "blue sea"]
FAST = ["--no-progress-bar", "--attn-implementation", "sdpa"]


def _texts(n: int) -> list[str]:
    return [f"{WORDS[i % 10]} number {i} {'and a longer tail ' * (i % 4)}".strip() for i in range(n)]


def _corpus(path, n: int, extra: dict | None = None) -> str:
    with open(path, "w") as f:
        for i, text in enumerate(_texts(n)):
            row = {"id": f"doc{i}", "text": text, "lang": "en" if i % 3 else "fr"}
            row.update((extra or {}).get(i, {}))
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model") / "tiny")
    tiny_btok(seed=3).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    return BTokModel.from_pretrained(model_dir, attn_implementation="sdpa").eval()


def _args(model_dir, data, output, *more) -> list[str]:
    return ["--model", model_dir, "--data", data, "--output", output, *FAST, *more]


def _table(path):
    return lance.dataset(path).to_table()


def _vectors(table, column="vector") -> torch.Tensor:
    return torch.tensor(np.array(table.column(column).to_pylist(), dtype=np.float32))


def _user_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err  # (transformers' loading bars go to stderr too)
    return errors[0]


def test_output_holds_the_engines_vectors(tmp_path, model_dir, model):
    data = _corpus(tmp_path / "c.jsonl", 30)
    out = str(tmp_path / "o.lance")
    summary = main(_args(model_dir, data, out, "--block-size", "8", "--dtype", "float32", "--keep-columns", "lang"))
    assert summary["rows"] == 30 and summary["skipped"] == 0 and summary["blocks"] == 4
    table = _table(out)
    assert table.column("id").to_pylist() == [f"doc{i}" for i in range(30)]
    assert table.column("row").to_pylist() == list(range(30))
    assert table.column("lang").to_pylist() == ["en" if i % 3 else "fr" for i in range(30)]
    expected = encode(model, _texts(30), block_size=8, batch_size=64)
    torch.testing.assert_close(_vectors(table), expected, atol=1e-6, rtol=0)
    settings = read_metadata(out)["settings"]
    assert settings["model"] == model_dir and settings["dtype"] == "float32" and settings["block_size"] == 8


@pytest.mark.parametrize("kind", ["parquet", "lance"])
def test_table_sources(tmp_path, model_dir, model, kind):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": _texts(9), "key": [f"k{i}" for i in range(9)]})
    data = str(tmp_path / f"c.{kind}")
    if kind == "parquet":
        pq.write_table(table, data)
    else:
        lance.write_dataset(table, data)
    out = str(tmp_path / "o.lance")
    main(_args(model_dir, data, out, "--block-size", "4", "--dtype", "float32", "--id-field", "key"))
    got = _table(out)
    assert got.column("id").to_pylist() == [f"k{i}" for i in range(9)]
    torch.testing.assert_close(_vectors(got), encode(model, _texts(9), block_size=4), atol=1e-6, rtol=0)


def test_float16_and_limit(tmp_path, model_dir, model):
    data = _corpus(tmp_path / "c.jsonl", 30)
    out = str(tmp_path / "o.lance")
    main(_args(model_dir, data, out, "--block-size", "8", "--limit", "11"))
    table = _table(out)
    assert table.num_rows == 11 and str(table.schema.field("vector").type.value_type) == "halffloat"
    expected = encode(model, _texts(11), block_size=8, batch_size=64)
    torch.testing.assert_close(_vectors(table), expected, atol=1e-3, rtol=0)  # float16 rounding of unit vectors


def test_stopped_run_resumes_to_the_same_dataset(tmp_path, model_dir, monkeypatch):
    """A deterministic stop after 2 of 5 blocks; the rerun encodes only the 3 missing blocks."""
    data = _corpus(tmp_path / "c.jsonl", 37)
    argv = _args(model_dir, data, str(tmp_path / "o.lance"), "--block-size", "8", "--dtype", "float32")
    fresh = str(tmp_path / "fresh.lance")
    main(_args(model_dir, data, fresh, "--block-size", "8", "--dtype", "float32"))

    real_write = EmbeddingStore.write_block
    written = []

    def stop_after_two(self, block, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt("stopped for the test")
        real_write(self, block, *args, **kwargs)
        written.append(block)

    monkeypatch.setattr(EmbeddingStore, "write_block", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    monkeypatch.setattr(EmbeddingStore, "write_block", real_write)
    assert written == [0, 1]

    import btok_model.embedder.encode as engine

    real_block = engine.encode_block
    encoded = []

    def counting(embedder, inputs, **kwargs):
        encoded.append(len(inputs))
        return real_block(embedder, inputs, **kwargs)

    monkeypatch.setattr(engine, "encode_block", counting)
    summary = main(argv)
    assert encoded == [8, 8, 5]  # blocks 2, 3, 4 only
    assert summary["encoded_this_run"] == 21 and summary["rows"] == 37
    assert _table(str(tmp_path / "o.lance")).equals(_table(fresh))


def test_killed_subprocess_resumes_to_the_same_dataset(tmp_path, model_dir):
    data = _corpus(tmp_path / "c.jsonl", 480)
    out = str(tmp_path / "o.lance")
    command = [sys.executable, "-m", "btok_model.embed", *_args(model_dir, data, out, "--block-size", "8")]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = os.path.join(out, BLOCKS_DIR)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(records) and len([n for n in os.listdir(records) if n.endswith(".json")]) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len([n for n in os.listdir(records) if n.endswith(".json")])
    assert 3 <= done < 60
    main(_args(model_dir, data, out, "--block-size", "8"))  # resumed in this process: what is left
    summary = read_metadata(out)["summary"]
    assert summary["rows"] == 480 and summary["encoded_this_run"] <= 480 - 8 * done
    fresh = str(tmp_path / "fresh.lance")
    main(_args(model_dir, data, fresh, "--block-size", "8"))
    assert _table(out).equals(_table(fresh))


def test_other_settings_are_refused(tmp_path, model_dir, capsys, monkeypatch):
    import btok_model.embed as embed_module

    data = _corpus(tmp_path / "c.jsonl", 10)
    out = str(tmp_path / "o.lance")
    main(_args(model_dir, data, out, "--block-size", "8"))
    capsys.readouterr()
    real_load = embed_module._load
    monkeypatch.setattr(embed_module, "_load", lambda args: pytest.fail("settings known without a model loaded it"))
    err = _user_error(capsys, _args(model_dir, data, out, "--block-size", "8", "--dtype", "float32"))
    assert "other settings" in err and "dtype: 'float16' there, 'float32' now" in err
    monkeypatch.setattr(embed_module, "_load", real_load)
    other = str(tmp_path / "other")
    tiny_btok(seed=4).save_pretrained(other)
    capsys.readouterr()
    err = _user_error(capsys, _args(other, data, out, "--block-size", "8"))
    assert "model:" in err
    # the same folder, retrained: told apart by its weights
    retrained = str(tmp_path / "retrained")
    shutil.copytree(model_dir, retrained)
    out = str(tmp_path / "r.lance")
    main(_args(retrained, data, out, "--block-size", "8"))
    shutil.rmtree(retrained)
    tiny_btok(seed=4).save_pretrained(retrained)
    capsys.readouterr()
    err = _user_error(capsys, _args(retrained, data, out, "--block-size", "8"))
    assert "weights:" in err and "model:" not in err


def test_bad_rows_error_before_the_model_loads_or_are_skipped(tmp_path, model_dir, capsys, monkeypatch):
    data = _corpus(tmp_path / "c.jsonl", 12, {4: {"text": "  "}, 9: {"text": "x " * 200}})
    import btok_model.embed as embed_module

    real_load = embed_module._load

    def no_model(args):
        raise AssertionError("the model loaded before the up-front check")

    monkeypatch.setattr(embed_module, "_load", no_model)
    err = _user_error(capsys, _args(model_dir, data, str(tmp_path / "a.lance")))
    assert err.startswith(f"error: {data}:5: field 'text' is empty")
    monkeypatch.setattr(embed_module, "_load", real_load)

    data_long = _corpus(tmp_path / "long.jsonl", 12, {9: {"text": "x " * 200}})
    capsys.readouterr()
    err = _user_error(capsys, _args(model_dir, data_long, str(tmp_path / "b.lance"), "--block-size", "4"))
    assert err.startswith(f"error: {data_long}:10: ") and "longer than" in err
    # the blocks before the bad row's are kept for the rerun
    assert EmbeddingStore.recorded_blocks(EmbeddingStore(str(tmp_path / "b.lance"), None, 4, "float16")) == {0, 1}

    out = str(tmp_path / "c.lance")
    summary = main(_args(model_dir, data, out, "--on-bad-row", "skip", "--block-size", "4"))
    assert summary["rows"] == 10 and summary["skipped"] == 2
    assert [(s["row"], s["where"]) for s in summary["skipped_rows"]] == [(4, f"{data}:5"), (9, f"{data}:10")]
    assert read_metadata(out)["summary"]["skipped"] == 2
    assert 4 not in _table(out).column("row").to_pylist()


def test_multi_vector_round_trips(tmp_path, model_dir, model):
    data = _corpus(tmp_path / "c.jsonl", 10)
    out = str(tmp_path / "o.lance")
    main(_args(model_dir, data, out, "--block-size", "4", "--dtype", "float32", "--multi-vector"))
    table = _table(out)
    multi = _vectors(table, "vectors")
    assert multi.shape == (10, model.collator.num_btoks, model.embedding_dim)
    expected = encode(model, _texts(10), block_size=4, batch_size=64, multi_vector=True)
    torch.testing.assert_close(multi, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(_vectors(table), encode(model, _texts(10), block_size=4), atol=1e-6, rtol=0)


def test_user_errors_exit_2(tmp_path, model_dir, capsys):
    err = _user_error(capsys, _args(model_dir, str(tmp_path / "none.jsonl"), str(tmp_path / "o.lance")))
    assert "none.jsonl: no such file" in err
    data = _corpus(tmp_path / "c.jsonl", 4)
    err = _user_error(capsys, _args(model_dir, data, str(tmp_path / "o.lance"), "--keep-columns", "id"))
    assert "--keep-columns ['id']: the output has its own columns" in err
    err = _user_error(capsys, _args(model_dir, data, str(tmp_path / "o.lance"), "--block-size", "0"))
    assert "--block-size must be >= 1" in err


def test_image_folder_with_a_corrupt_file(tmp_path, monkeypatch, capsys):
    import btok_model.embed as embed_module
    from btok_model.embedder.encode import encode as engine_encode

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        image(28 + 4 * i, 28, i).save(folder / f"p{i}.png")
    (folder / "p2.png").write_bytes(b"\x89PNG broken")
    vl = tiny_vl_btok(attn="sdpa").eval()
    monkeypatch.setattr(embed_module, "_load", lambda args: vl)
    argv = ["--model", "tiny-vl", "--data", str(folder), "--no-progress-bar", "--dtype", "float32"]
    err = _user_error(capsys, [*argv, "--output", str(tmp_path / "a.lance")])
    assert err.startswith(f"error: {folder / 'p2.png'}: cannot decode image file")
    out = str(tmp_path / "b.lance")
    summary = main([*argv, "--output", out, "--on-bad-row", "skip"])
    assert summary["skipped"] == 1 and summary["skipped_rows"][0]["where"] == str(folder / "p2.png")
    table = _table(out)
    assert table.column("id").to_pylist() == ["p0.png", "p1.png", "p3.png", "p4.png"]
    good = [{"text": None, "image": str(folder / f"p{i}.png")} for i in (0, 1, 3, 4)]
    torch.testing.assert_close(_vectors(table), engine_encode(vl, good), atol=1e-5, rtol=0)


def test_two_gloo_processes_equal_one(tmp_path, model_dir):
    data = _corpus(tmp_path / "c.jsonl", 45)
    one, two = str(tmp_path / "one.lance"), str(tmp_path / "two.lance")
    main(_args(model_dir, data, one, "--block-size", "8", "--dtype", "float32"))
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "btok_model.embed", *_args(model_dir, data, two, "--block-size", "8", "--dtype", "float32")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _table(one), _table(two)
    assert b.column("id").to_pylist() == a.column("id").to_pylist()
    assert b.column("row").to_pylist() == list(range(45))
    torch.testing.assert_close(_vectors(b), _vectors(a), atol=1e-6, rtol=1e-6)  # fp32 rounding at most
    records = sorted(os.listdir(os.path.join(two, BLOCKS_DIR)))
    assert len(records) == 6
