"""Training rows that cannot be decoded: replaced by another draw from their source, counted and
named once (``--on-bad-row skip``), or the run stopped after a checkpoint with one ``error:``
line naming file and row (``--on-bad-row error``), every rank told first."""

import json
import logging
import time

import pytest
import torch.multiprocessing as mp

from btok_model.datasets import write_jsonl
from btok_model.train import main as train_main
from btok_model.training import DataSource, MixedDataset
from btok_model.training.bad_rows import BAD_ROWS_KEY
from tests.helpers.mmeb_train_data import IMG, mmeb_row, write_lance, write_parquet
from tests.helpers.training import VL_TRAIN, vl_folder, write_vl_data
from tests.training.bad_rows_worker import run

SUBSETS = ("N24News", "ChartQA")
BAD = 5  # the row of N24News whose image is not an image


def _mmeb(tmp_path, rows: int = 16, layout: str = "parquet"):
    """Two MMEB-train subsets of ``rows`` image rows each (``layout``: parquet, or the authors'
    Lance repack), row :data:`BAD` of N24News pointing at an image that is not an image."""
    data = {
        subset: [
            mmeb_row(
                f"{IMG}\nRepresent the given image {i}\n", f"images/{subset}/Train/{i}.jpg", f"answer {i} of {subset}"
            )
            for i in range(rows)
        ]
        for subset in SUBSETS
    }
    if layout == "lance":
        root = write_lance(tmp_path / "mmeb", data, not_images=(f"images/N24News/Train/{BAD}.jpg",))
        return root, f"{root}/data/N24News/train.lance: row {BAD}"
    root = write_parquet(tmp_path / "mmeb", data)
    bad_image = tmp_path / "mmeb" / "images" / "N24News" / "Train" / f"{BAD}.jpg"
    bad_image.write_bytes(b"\xff\xd8 not a jpeg")
    return root, f"{root}/N24News/train-00000-of-00001.parquet: row {BAD}"


def test_the_replacement_comes_from_the_same_source_and_names_the_row(tmp_path):
    root, where = _mmeb(tmp_path)
    dataset = MixedDataset([DataSource(root, 1.0, subset) for subset in SUBSETS])
    example = dataset[BAD]
    assert example["source"] == "N24News" and example["query"]["image"].size == (42, 28)
    (row,) = example[BAD_ROWS_KEY]
    assert row.where == where and row.source == "N24News" and "cannot read image file" in row.error
    assert f"{BAD}.jpg" in row.error
    again = dataset[BAD]  # the same replacement every time: ranks, workers and resumed runs agree
    assert again["positive"] == example["positive"] != f"answer {BAD} of N24News"
    assert all(BAD_ROWS_KEY not in dataset[i] for i in range(len(dataset)) if i != BAD)


def test_a_source_of_bad_rows_only_is_an_error(tmp_path):
    root, _ = _mmeb(tmp_path, rows=1)
    (tmp_path / "mmeb" / "images" / "N24News" / "Train" / "0.jpg").write_bytes(b"garbage")
    dataset = MixedDataset([DataSource(root, 1.0, "N24News")], max_redraws=3)
    with pytest.raises(ValueError, match=r"source N24News: 4 draws in a row could not be decoded.*row 0"):
        dataset[0]


def _argv(tmp_path, root, out, *more):
    folder = vl_folder(tmp_path, "qwen2_vl")
    argv = ["--model", str(folder), "--train-data", f"{root}/N24News", "--output-dir", str(out)]
    argv += ["--batch-size", "4", "--max-steps", "4", "--lora-r", "0", "--warmup-ratio", "0", "--logging-steps", "1"]
    argv += ["--source-block-size", "4", *more]
    return argv


@pytest.mark.parametrize(
    "layout, workers", [("parquet", 0), ("parquet", 2), ("lance", 1)], ids=["in-process", "2-workers", "lance-1-worker"]
)
def test_skip_replaces_counts_and_names_the_row_once(tmp_path, layout, workers, float32_cpu, caplog):
    """Also with workers reading the authors' Lance layout: Lance is not fork-safe, so they start
    by spawn (the dataset pickled to them, its tables reopened there) and do the same."""
    caplog.set_level(logging.INFO, logger="btok_model.training.trainer")
    root, where = _mmeb(tmp_path, layout=layout)
    out = tmp_path / "run"
    # 4 steps of 4 rows from one source: the 16 rows of N24News, the bad one among them.
    assert train_main(_argv(tmp_path, root, out, "--dataloader-num-workers", str(workers))) == 0
    command = json.loads((out / "train_command.json").read_text())
    assert command["recipe"]["dataloader_num_workers"] == workers and command["recipe"]["on_bad_row"] == "skip"
    summary = command["summary"]
    assert summary["bad_rows_replaced"] == 1 and [r["where"] for r in summary["bad_rows"]] == [where]
    assert summary["bad_rows"][0]["source"] == "N24News"
    named = [r.getMessage() for r in caplog.records if "bad row" in r.getMessage()]
    assert len(named) == 1 and where in named[0]
    lines = (out / "bad_rows.rank0.jsonl").read_text().splitlines()
    assert [json.loads(line)["where"] for line in lines] == [where]
    if layout == "lance":
        assert "data-loader workers (1) start by spawn: Lance is not fork-safe" in caplog.text


def test_error_stops_with_one_line_after_a_checkpoint(tmp_path, float32_cpu, capsys):
    root, where = _mmeb(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        train_main(_argv(tmp_path, root, out, "--on-bad-row", "error"))
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    err = [line for line in lines if line.startswith("error:")]  # progress bars share stderr
    assert len(err) == 1 and err[0] == lines[-1]
    assert err[0].startswith(f"error: {where}: ") and "cannot read image file" in err[0]
    checkpoint = err[0].split("after saving ")[1].split(";")[0]
    step = int(checkpoint.rsplit("-", 1)[1])
    state = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
    assert state["global_step"] == step < 4
    command = json.loads((out / "train_command.json").read_text())
    assert command["recipe"]["on_bad_row"] == "error" and command["from"]["on_bad_row"] == "flag"
    summary = command["summary"]
    assert summary["bad_rows_replaced"] == 1 and summary["bad_rows"][0]["where"] == where


def test_two_ranks_both_stop_on_a_bad_row_one_of_them_met(tmp_path, monkeypatch):
    """2 gloo ranks x 2 examples, one corrupt image among 8: whichever rank draws it, both
    raise with the same row after one checkpoint (the other rank does not wait in a collective)."""
    folder = vl_folder(tmp_path, "qwen2_vl")
    write_vl_data(tmp_path)
    rows = [dict(VL_TRAIN[i % 4], query=f"{VL_TRAIN[i % 4]['query']} {i}") for i in range(8)]
    rows[6] = {"query": "what is this", "query_image": "img/bad.png", "positive": "nothing"}
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG broken")
    write_jsonl(tmp_path / "ddp.jsonl", rows)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    context = mp.start_processes(
        run, args=(2, str(tmp_path), str(folder), str(tmp_path / "ddp.jsonl")), nprocs=2, join=False
    )
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not stop: one waits for the other")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    where = f"{tmp_path / 'ddp.jsonl'}:7"
    for result in results:
        assert "finished" not in result, result
        assert result["rows"] == results[0]["rows"] and len(result["rows"]) == 1 and result["rows"][0].startswith(where)
        assert result["error"].startswith(where)
    assert (tmp_path / "run" / results[0]["checkpoint"].rsplit("/", 1)[1] / "trainer_state.json").is_file()


@pytest.mark.parametrize("flag, value", [("--dataloader-num-workers", "-1"), ("--on-bad-row", "retry")])
def test_bad_flag_values_exit_with_status_2(tmp_path, flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        train_main(["--model", "x", "--train-data", "t.jsonl", "--output-dir", str(tmp_path), flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and value in err


def test_a_source_that_gives_up_stops_the_cli_with_one_line(tmp_path, float32_cpu, capsys):
    """Every image of the one source undecodable: after 100 redraws the source is given up (a
    DataError raised where the example is read, inside the DataLoader); the CLI reports it as one
    ``error:`` line naming the source and a row, exit status 2, no traceback."""
    root, _ = _mmeb(tmp_path, rows=4)
    for i in range(4):
        (tmp_path / "mmeb" / "images" / "N24News" / "Train" / f"{i}.jpg").write_bytes(b"garbage")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        train_main(_argv(tmp_path, root, out))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]  # progress bars share stderr
    assert len(errors) == 1 and errors[0] == lines[-1] and "Traceback" not in err
    assert errors[0].startswith("error: source N24News: 101 draws in a row could not be decoded, the last ")
    assert "N24News/train-00000-of-00001.parquet: row " in errors[0]
    summary = json.loads((out / "train_command.json").read_text())["summary"]
    assert summary["bad_rows_replaced"] == 0  # no example came out of the source
