"""Every ``python -m btok_model.<command>`` reports an error its user can fix the same way: one
``error: ...`` line on stderr, exit status 2, no traceback (:mod:`btok_model.cli`)."""

import importlib

import pytest
from torch._utils import ExceptionWrapper  # what a DataLoader worker sends back with its exception

from btok_model.cli import EXIT_STATUS, UsageError, command, fail, user_error_message
from btok_model.datasets import DataError
from btok_model.embedder.collate import ExampleError


def _one_error_line(capsys, run) -> str:
    """The one ``error:`` line of ``run()``, which must exit with status 2 and print nothing else."""
    with pytest.raises(SystemExit) as stop:
        run()
    assert stop.value.code == EXIT_STATUS == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(stop.value) == lines[0]  # pytest.raises(SystemExit, match=...) reads the line
    return lines[0]


def _argv(command_name: str, tmp_path) -> list[str]:
    missing = str(tmp_path / "missing.jsonl")
    return {
        "train": ["--model", "unused", "--train-data", missing, "--output-dir", str(tmp_path / "run")],
        "evaluate": ["--model", "unused", "--data", missing],
        "mine": ["--model", "unused", "--data", missing, "--output", str(tmp_path / "mined.jsonl")],
        "embed": ["--model", "unused", "--data", missing, "--output", str(tmp_path / "out.lance")],
        "search": ["--index", str(tmp_path / "missing.lance"), "--query", "a query"],
    }[command_name]


@pytest.mark.parametrize("command_name", ["train", "evaluate", "mine", "embed", "search"])
def test_a_missing_data_file_is_one_error_line_and_status_2(tmp_path, capsys, command_name):
    main = importlib.import_module(f"btok_model.{command_name}").main
    line = _one_error_line(capsys, lambda: main(_argv(command_name, tmp_path)))
    assert "missing" in line and "no such" in line  # names the file


@pytest.mark.parametrize(
    "command_name, argv, message",
    [
        ("evaluate", ["--data", "d.jsonl", "--encode-block", "0"], "error: --encode-block must be >= 1, got 0"),
        ("evaluate", ["--data", "d.jsonl", "--baseline", "tfidf", "--dims", "8"], "error: --similarity and --dims"),
        (
            "train",
            ["--model", "m", "--train-data", "t.jsonl", "--output-dir", "o", "--metric-for-best-model", "recall@1"],
            "error: --metric-for-best-model and --load-best-model-at-end need --eval-data",
        ),
    ],
    ids=["evaluate-flag", "evaluate-tfidf", "train-eval-flags"],
)
def test_errors_that_exited_with_status_1_exit_with_2(tmp_path, monkeypatch, capsys, command_name, argv, message):
    """These were ``raise SystemExit("error: ...")``: Python printed the line and exited with 1."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"query": "it barks", "positive": "dog"}\n')
    main = importlib.import_module(f"btok_model.{command_name}").main
    assert _one_error_line(capsys, lambda: main(argv)).startswith(message)


def test_fail_and_the_command_wrapper(capsys):
    assert _one_error_line(capsys, lambda: fail("--flag: bad")) == "error: --flag: bad"
    assert issubclass(UsageError, SystemExit)

    @command
    def bad_data(argv=None):
        raise DataError(f"rows.jsonl:3: field 'query' is empty ({argv})")

    @command
    def refused(argv=None):
        raise ExampleError("text 0: 40 tokens, longer than max_length 32")

    @command
    def bug(argv=None):
        raise ValueError("not a user error")

    assert _one_error_line(capsys, lambda: bad_data(["x"])) == "error: rows.jsonl:3: field 'query' is empty (['x'])"
    assert _one_error_line(capsys, refused) == "error: text 0: 40 tokens, longer than max_length 32"
    with pytest.raises(ValueError, match="not a user error"):  # a bug keeps its traceback
        bug()
    assert capsys.readouterr().err == ""


def test_an_error_raised_in_a_data_loader_worker_is_its_own_message(capsys):
    """A DataLoader re-raises a worker's exception as its type with the worker's traceback for
    message; the line is the original message."""
    original = "source N24News: 101 draws in a row could not be decoded, the last x.parquet: row 0: bad image"
    try:
        raise DataError(original)
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as caught:
        wrapped.reraise()
    assert str(caught.value).startswith("Caught DataError in DataLoader worker process 0") and original in str(
        caught.value
    )
    assert user_error_message(caught.value) == original
    assert user_error_message(DataError(original)) == original

    @command
    def in_worker(argv=None):
        wrapped.reraise()

    assert _one_error_line(capsys, in_worker) == f"error: {original}"


def test_the_line_is_a_line_of_its_own_when_a_progress_bar_is_open(capsys):
    from tqdm.auto import tqdm

    bar = tqdm(total=4, desc="Embedding")
    bar.update(1)  # the run stops inside the bar: nothing has ended its line
    with pytest.raises(SystemExit):
        fail("stopped")
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "error: stopped" and "Embedding" in err
