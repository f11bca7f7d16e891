"""MMEB-V2 evaluation end to end on tiny Lance fixtures: reading, scoring, aggregation, resume, bad data."""

import hashlib
import json
import os
import shutil

import pytest
import torch

from btok_model.evaluation.metrics import graded_metrics_from_scores
from btok_model.evaluation.mmeb_v2 import aggregate, evaluate_mmeb_v2, evaluate_task, markdown_table, open_tasks
from btok_model.evaluation.mmeb_v2_index import dataset
from tests.helpers.mmeb_v2_data import FIXTURE_DATASETS, png, write_dataset, write_fixture

QUIET = {"show_progress_bar": False, "log": lambda _: None}
QA_PREFIX = (
    "Given a video and a question, select the most accurate answer from the provided candidates. "
    "Return only the exact text of your chosen answer. Question:  "
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fixture(str(tmp_path_factory.mktemp("mmeb")))


class HashEmbedder:
    """A deterministic stand-in embedder: each input's vector comes from a hash of its text and
    pixels (so equal inputs get equal vectors); ``collapse`` maps every input to one vector."""

    def __init__(self, dim: int = 8, collapse: bool = False, fail_on: str | None = None):
        self.dim, self.collapse, self.fail_on = dim, collapse, fail_on
        self.calls: list[list] = []

    @staticmethod
    def key(item) -> bytes:
        if isinstance(item, str):
            return item.encode()
        media = item.get("image") or item.get("video")
        frames = media if isinstance(media, list) else [media]
        return (item.get("text") or "").encode() + b"".join(f.tobytes() for f in frames)

    def encode(self, inputs, batch_size=32, show_progress_bar=False):
        self.calls.append(list(inputs))
        texts = [i if isinstance(i, str) else i.get("text") or "" for i in inputs]
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise KeyboardInterrupt  # an interruption in the middle of a run
        rows = []
        for item in inputs:
            seed = int.from_bytes(hashlib.sha256(b"x" if self.collapse else self.key(item)).digest()[:8], "little")
            rows.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def _dense_reference(task, model) -> dict:
    """Every query against its whole candidate set, one dense score matrix per query (no blocks,
    no deduplication): the per-query candidate set is the qrels list or the whole table."""
    from btok_model.evaluation.mmeb_v2 import _model_inputs

    cand_rows = list(range(len(task.candidate_ids)))
    cands = model.encode(_model_inputs(task, task.inputs.candidate, task.candidates, cand_rows, "c", 8))
    queries = model.encode(_model_inputs(task, task.inputs.query, task.queries, task.query_rows, "q", 8))
    per_query = []
    for q, rows in enumerate(task.lists):
        rows = cand_rows if rows is None else rows
        gains = torch.zeros(1, len(rows), dtype=torch.float64)
        for c, g in task.relevant[q]:
            gains[0, rows.index(c)] = g
        scores = (cands[rows] @ queries[q])[None]
        per_query.append(graded_metrics_from_scores(scores, gains, hit_ks=(1, 5, 10), ndcg_ks=(5, 10)))
    return {k: sum(m[k] for m in per_query) / len(per_query) for k in per_query[0]}


def test_fixture_through_tiny_qwen2_vl(root, tmp_path):
    from tests.helpers.tiny import tiny_vl_btok

    torch.manual_seed(0)
    model = tiny_vl_btok()
    report = evaluate_mmeb_v2(root, model, tmp_path / "out", datasets=list(FIXTURE_DATASETS), batch_size=4, **QUIET)
    assert [r["dataset"] for r in report["datasets"]] == list(FIXTURE_DATASETS)
    tasks = open_tasks(root, list(FIXTURE_DATASETS))
    for task, result in zip(tasks, report["datasets"]):
        reference = _dense_reference(task, model)
        for name, value in reference.items():
            assert result[name] == pytest.approx(value, abs=1e-12), (task.name, name)
        assert result["score"] == result[dataset(task.name).metric]
    by = {r["dataset"]: r["score"] for r in report["datasets"]}
    summary = report["summary"]
    # meta-task: mean over its datasets; modality: mean over its DATASETS; Overall: mean over all datasets
    assert summary["meta_tasks"] == pytest.approx(
        {
            "image_classification": by["ImageNet-1K"],
            "image_retrieval": by["MSCOCO_t2i"],
            "video_question_answer": by["Video-MME"],
            "visdoc_vidore_v1": by["ViDoRe_arxivqa"],
        }
    )
    assert summary["modalities"] == pytest.approx(
        {"image": (by["ImageNet-1K"] + by["MSCOCO_t2i"]) / 2, "video": by["Video-MME"], "visdoc": by["ViDoRe_arxivqa"]}
    )
    assert summary["overall"] == pytest.approx(sum(by.values()) / 4)
    assert summary["num_datasets"] == 4 and not summary["complete"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"] == summary
    for name in FIXTURE_DATASETS:
        assert json.loads((tmp_path / "out" / "datasets" / f"{name}.json").read_text())["score"] == by[name]
    table = (tmp_path / "out" / "results.md").read_text()
    assert f"| {100 * summary['overall']:.1f} |" in table and "Over 4 of the 78" in table


def test_inputs_reach_the_model_as_the_authors_compose_them(root):
    model = HashEmbedder()
    tasks = {t.name: t for t in open_tasks(root, list(FIXTURE_DATASETS), limit=1)}
    for task in tasks.values():
        evaluate_task(task, model, show_progress_bar=False)
    seen = [item for call in model.calls for item in call]
    texts = [i if isinstance(i, str) else (i.get("text"), "image" if "image" in i else "video") for i in seen]
    assert ("represent the given image for classification\n", "image") in texts
    assert ("represent the given image.\n", "image") in texts
    assert "find me an everyday image that matches the given caption: a dog on a couch\n" in texts
    assert (QA_PREFIX + "is it day?\na. yes\nb. no\nc. maybe\n", "video") in texts
    assert "Find a document image that matches the given query: what is the loss?\n" in texts
    assert ("Understand the content of the provided document image.\n", "image") in texts
    video = next(i for i in seen if isinstance(i, dict) and "video" in i)
    assert len(video["video"]) == 8  # 10 stored frames, 8 sampled


def test_blocks_and_dedup_do_not_change_the_scores(root, tmp_path):
    model = HashEmbedder()
    for task in open_tasks(root, list(FIXTURE_DATASETS)):
        whole = evaluate_task(task, model, show_progress_bar=False)
        tiny = evaluate_task(task, model, block=2, query_block=1, corpus_block=2, show_progress_bar=False)
        reference = _dense_reference(task, model)
        for name, value in reference.items():
            assert whole[name] == pytest.approx(value, abs=1e-12) and tiny[name] == pytest.approx(value, abs=1e-12)


def test_ties_and_limit(root):
    tasks = {t.name: t for t in open_tasks(root, list(FIXTURE_DATASETS))}
    assert tasks["ViDoRe_arxivqa"].relevant == [[(1, 2.0), (3, 1.0)], [(0, 1.0)], [(2, 1.0), (4, 1.0)]]
    assert tasks["ViDoRe_arxivqa"].lists == [None, None, None]
    assert tasks["Video-MME"].lists == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert tasks["Video-MME"].relevant == [[(0, 1.0)], [(4, 1.0)], [(6, 1.0)]]
    collapsed = HashEmbedder(collapse=True)  # every score equal: Hit@1 is 1 / (candidates ranked against)
    by = {
        t.name: evaluate_task(t, collapsed, show_progress_bar=False) for t in open_tasks(root, list(FIXTURE_DATASETS))
    }
    assert by["ImageNet-1K"]["hit@1"] == pytest.approx(1 / 5)
    assert by["MSCOCO_t2i"]["hit@1"] == pytest.approx(1 / 4)
    assert by["Video-MME"]["hit@1"] == pytest.approx(1 / 3)
    # q0 has gains 2, 1 among 5 pages, q1 one page, q2 two pages (the third judged page has score 0)
    assert by["ViDoRe_arxivqa"]["hit@1"] == pytest.approx((2 / 5 + 1 / 5 + 2 / 5) / 3)
    limited = {t.name: t for t in open_tasks(root, list(FIXTURE_DATASETS), limit=2)}
    video = evaluate_task(limited["Video-MME"], HashEmbedder(), show_progress_bar=False)
    assert (video["num_queries"], video["num_queries_total"], video["num_candidates"]) == (2, 3, 6)
    labels = evaluate_task(limited["ImageNet-1K"], HashEmbedder(), show_progress_bar=False)
    assert (labels["num_queries"], labels["num_candidates"]) == (2, 5)  # a shared corpus stays whole


def test_mixed_sparse_and_exhaustive_rows(tmp_path):
    # Image QA stores a sparse row when a query's options are the whole candidate set, an
    # exhaustive row otherwise: both kinds in one dataset.
    rows = [
        {"id": i, "qry_text": f"<|image_1|>\nq{i}?\n", "qry_inst": None, "qry_img_path": None, "image": png(i)}
        for i in range(3)
    ]
    write_dataset(
        str(tmp_path),
        "image-tasks/GQA",
        rows,
        [{"id": i, "text": t} for i, t in enumerate(["yes", "no", "red", "blue"])],
        [
            {"query_id": 0, "mode": "sparse", "candidate_ids": [1], "candidate_scores": [1.0]},
            {"query_id": 1, "mode": "exhaustive", "candidate_ids": [2, 3], "candidate_scores": [0.0, 1.0]},
            {"query_id": 2, "mode": "exhaustive", "candidate_ids": [0, 1], "candidate_scores": [1.0, 0.0]},
        ],
        {"name": "GQA"},
    )
    (task,) = open_tasks(str(tmp_path), ["GQA"])
    model = HashEmbedder()
    result = evaluate_task(task, model, show_progress_bar=False)
    assert (result["sparse_queries"], result["exhaustive_queries"]) == (1, 2)
    assert result["hit@1"] == pytest.approx(_dense_reference(task, model)["hit@1"], abs=1e-12)


def test_resume_finishes_with_the_same_table(root, tmp_path):
    straight = evaluate_mmeb_v2(root, HashEmbedder(), tmp_path / "a", datasets=list(FIXTURE_DATASETS), **QUIET)
    # interrupted while embedding the third dataset's queries (its second query; the first is
    # embedded, and passes, in the check before the run)
    interrupted = HashEmbedder(fail_on="what color?")
    with pytest.raises(KeyboardInterrupt):
        evaluate_mmeb_v2(root, interrupted, tmp_path / "b", datasets=list(FIXTURE_DATASETS), **QUIET)
    done = sorted(os.listdir(tmp_path / "b" / "datasets"))
    assert done == ["ImageNet-1K.json", "MSCOCO_t2i.json"] and not (tmp_path / "b" / "results.json").exists()
    again = HashEmbedder()
    lines = []
    resumed = evaluate_mmeb_v2(
        root, again, tmp_path / "b", datasets=list(FIXTURE_DATASETS), show_progress_bar=False, log=lines.append
    )
    assert lines[:2] == [
        f"{n}: already evaluated ({tmp_path / 'b' / 'datasets' / n}.json)" for n in FIXTURE_DATASETS[:2]
    ]
    embedded = [item for call in again.calls for item in call]
    assert not any(isinstance(i, str) and i in ("tench", "goldfish") for i in embedded)  # ImageNet not redone

    def drop(report):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in report["datasets"]]

    assert drop(resumed) == drop(straight) and resumed["summary"] == straight["summary"]
    assert (tmp_path / "b" / "results.md").read_text() == (tmp_path / "a" / "results.md").read_text()
    with pytest.raises(ValueError, match=r"holds MMEB-V2 results of other settings \(limit"):
        evaluate_mmeb_v2(root, again, tmp_path / "b", datasets=list(FIXTURE_DATASETS), limit=1, **QUIET)


def test_bad_data_is_named(root, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(root, copy)
    with pytest.raises(ValueError, match="unknown MMEB-V2 dataset 'ImageNet'"):
        open_tasks(copy, ["ImageNet"])
    with pytest.raises(FileNotFoundError, match=r"lacks 1 of the 2 datasets selected: image-tasks/CIRR"):
        open_tasks(copy, ["CIRR", "ImageNet-1K"])
    shutil.rmtree(os.path.join(copy, "image-tasks/MSCOCO_t2i/qrels.lance"))
    with pytest.raises(FileNotFoundError, match=r"MSCOCO_t2i: missing table .*MSCOCO_t2i/qrels.lance"):
        open_tasks(copy, ["MSCOCO_t2i"])
    bad = str(tmp_path / "bad")

    def qrels_case(qrels, candidates=None):
        shutil.rmtree(bad, ignore_errors=True)
        write_dataset(
            bad,
            "visdoc-tasks/ViDoRe_docvqa",
            [{"id": "q0", "query": "what?"}, {"id": "q1", "query": "who?"}],
            candidates or [{"id": "p0", "image": png(0)}, {"id": "p1", "image": png(1)}],
            qrels,
            {"name": "ViDoRe_docvqa"},
        )
        return open_tasks(bad, ["ViDoRe_docvqa"])

    ok = {"query_id": "q0", "mode": "sparse", "candidate_ids": ["p0"], "candidate_scores": [1.0]}
    with pytest.raises(ValueError, match=r"ViDoRe_docvqa: qrels row 1 \(query id 'q1'\): lists no candidates"):
        qrels_case([ok, {"query_id": "q1", "mode": "sparse", "candidate_ids": [], "candidate_scores": []}])
    with pytest.raises(ValueError, match=r"qrels row 1 \(query id 'q1'\): unknown candidate id\(s\) \['p9'\]"):
        qrels_case([ok, {"query_id": "q1", "mode": "sparse", "candidate_ids": ["p9"], "candidate_scores": [1.0]}])
    with pytest.raises(ValueError, match="mode must be 'sparse' or 'exhaustive', got 'global'"):
        qrels_case([ok, {"query_id": "q1", "mode": "global", "candidate_ids": ["p0"], "candidate_scores": [1.0]}])
    with pytest.raises(ValueError, match=r"ViDoRe_docvqa: no qrels row for query id 'q1'"):
        qrels_case([ok])
    with pytest.raises(ValueError, match=r"candidates.lance: no column\(s\) image \(ViDoRe_docvqa candidates\)"):
        qrels_case([ok], candidates=[{"id": "p0", "path": "x.png"}])
    with pytest.raises(ValueError, match="id 'p0' appears twice"):
        qrels_case([ok], candidates=[{"id": "p0", "image": png(0)}, {"id": "p0", "image": png(1)}])


def test_aggregate_and_table_by_hand():
    results = [
        {"dataset": "VOC2007", "score": 0.5},
        {"dataset": "N24News", "score": 0.7},
        {"dataset": "OK-VQA", "score": 0.3},
        {"dataset": "K700", "score": 0.2},
    ]
    summary = aggregate(results)
    assert summary["meta_tasks"] == pytest.approx(
        {"image_classification": 0.6, "image_question_answer": 0.3, "video_classification": 0.2}
    )
    assert summary["modalities"] == pytest.approx({"image": 0.5, "video": 0.2})  # image: (0.5+0.7+0.3)/3
    assert summary["overall"] == pytest.approx(1.7 / 4)
    with pytest.raises(ValueError, match="two results for MMEB-V2 dataset 'K700'"):
        aggregate(results + [{"dataset": "K700", "score": 0.1}])
    rows = [
        dict(
            r,
            modality=dataset(r["dataset"]).modality,
            meta_task=dataset(r["dataset"]).meta_task,
            metric="hit@1",
            num_queries=10,
            num_queries_total=10,
            num_candidates=5,
        )
        for r in results
    ]
    table = markdown_table(rows, summary)
    assert table.splitlines()[0].startswith("| Image CLS | Image QA | Image RET | Image GD | **Image** | Video CLS")
    assert (
        table.splitlines()[2] == "| 60.0 | 30.0 | – | – | 50.0 | 20.0 | – | – | – | 20.0 | – | – | – | – | – | 42.5 |"
    )


def test_cli(root, tmp_path, monkeypatch, capsys):
    import btok_model.evaluate as cli
    from btok_model.evaluation import EmbeddingScorer

    loads = []
    monkeypatch.setattr(cli, "load_scorer", lambda args: loads.append(args.model) or EmbeddingScorer(HashEmbedder()))
    out = tmp_path / "out"
    argv = ["--model", "m", "--mmeb-v2", root, "--datasets", *FIXTURE_DATASETS, "--output-dir", str(out)]
    report = cli.main([*argv, "--limit", "2", "--no-progress-bar"])
    assert [r["num_queries"] for r in report["datasets"]] == [2, 2, 2, 2]
    assert report["settings"] == {
        "limit": 2,
        "num_frames": 8,
        "mode": "canonical",
        "model": "m",
        "gguf_file": None,
        "baseline": None,
        "pixel_limits": {"image": [None, None], "video": [None, None]},
    }
    printed = capsys.readouterr().out
    assert "ImageNet-1K: hit@1" in printed and printed.endswith((out / "results.md").read_text())
    for extra, message in [
        (["--output-dir", str(out)], "give --data FILE ... or --mmeb-v2 ROOT"),
        (["--mmeb-v2", root, "--datasets", "K7OO", "--output-dir", str(out)], "error: unknown MMEB-V2 dataset 'K7OO'"),
        (["--mmeb-v2", root, "--modalities", "video", "--output-dir", str(out)], "error: MMEB-V2 root .* lacks 17 of"),
        (["--mmeb-v2", root, "--datasets", "K700"], "needs --output-dir"),
        (["--mmeb-v2", root, "--baseline", "tfidf", "--output-dir", str(out)], "scores text only"),
        (
            ["--mmeb-v2", root, "--datasets", "ImageNet-1K", "--output-dir", str(out), "--limit", "3"],
            "holds MMEB-V2 results of other settings",
        ),
    ]:
        with pytest.raises(SystemExit, match=message):
            cli.main(["--model", "m", *extra])
    assert loads == ["m", "m"]  # bad data fails before a model loads; the folder check after


def test_cli_origin_mode(root, tmp_path, monkeypatch, capsys):
    """``--mmeb-mode origin`` end to end: the authors' origin prompts reach the model, the mode is
    recorded, and a rerun into the same folder in the other mode is refused."""
    import btok_model.evaluate as cli
    from btok_model.evaluation import EmbeddingScorer

    models = []
    monkeypatch.setattr(cli, "load_scorer", lambda args: models.append(HashEmbedder()) or EmbeddingScorer(models[-1]))
    out = tmp_path / "out"
    argv = ["--model", "m", "--mmeb-v2", root, "--datasets", *FIXTURE_DATASETS, "--output-dir", str(out)]
    report = cli.main([*argv, "--mmeb-mode", "origin", "--no-progress-bar"])
    assert report["settings"]["mode"] == "origin"
    assert json.loads((out / "settings.json").read_text())["mode"] == "origin"
    assert [r["num_queries"] for r in report["datasets"]] == [4, 3, 3, 3]
    seen = [item for call in models[0].calls for item in call]
    texts = [i if isinstance(i, str) else (i.get("text"), "image" if "image" in i else "video") for i in seen]
    # origin: the placeholder inline (removed with the space after it), no final newline, raw whitespace
    assert (QA_PREFIX + "is it day?\na. yes\nb. no\nc. maybe", "video") in texts
    assert "Find a document image that matches the given query: what is the loss?" in texts
    assert ("Understand the content of the provided document image.", "image") in texts
    assert ("represent the given image for classification\n", "image") in texts  # the same in both modes
    canonical = evaluate_mmeb_v2(root, HashEmbedder(), tmp_path / "c", datasets=list(FIXTURE_DATASETS), **QUIET)
    for ours, theirs in zip(report["datasets"][:2], canonical["datasets"][:2]):  # image: the same prompts
        assert {k: v for k, v in ours.items() if k != "seconds"} == {k: v for k, v in theirs.items() if k != "seconds"}
    with pytest.raises(SystemExit, match=r"other settings \(mode: \['origin'\] there, \['canonical'\] now\)"):
        cli.main([*argv, "--no-progress-bar"])
    with pytest.raises(SystemExit):
        cli.main([*argv, "--mmeb-mode", "orign"])
    assert "argument --mmeb-mode: invalid choice: 'orign'" in capsys.readouterr().err


def test_mode_is_checked(root, tmp_path):
    with pytest.raises(ValueError, match=r"mode must be one of canonical, origin, got 'Origin'"):
        open_tasks(root, ["ImageNet-1K"], mode="Origin")
    tasks = open_tasks(root, ["ImageNet-1K"], mode="origin")
    assert tasks[0].mode == "origin"
    with pytest.raises(ValueError, match=r"tasks were opened with mode 'origin', but mode is 'canonical'"):
        evaluate_mmeb_v2(root, HashEmbedder(), tmp_path / "o", tasks=tasks, **QUIET)
    before = tmp_path / "before"  # a folder written before the mode was recorded reads as canonical
    evaluate_mmeb_v2(root, HashEmbedder(), before, datasets=["ImageNet-1K"], **QUIET)
    settings = json.loads((before / "settings.json").read_text())
    (before / "settings.json").write_text(json.dumps({k: v for k, v in settings.items() if k != "mode"}))
    evaluate_mmeb_v2(root, HashEmbedder(), before, datasets=["ImageNet-1K"], **QUIET)
    with pytest.raises(ValueError, match=r"\(mode: \['canonical'\] there, \['origin'\] now\)"):
        evaluate_mmeb_v2(root, HashEmbedder(), before, datasets=["ImageNet-1K"], mode="origin", **QUIET)


def test_training_eval_source(root):
    from btok_model.training.eval_callback import load_eval_source

    source = load_eval_source(root, datasets=["ImageNet-1K", "ViDoRe_arxivqa"], limit=3)
    assert source.metric_names() == [
        "overall", "image", "visdoc", "image_classification", "visdoc_vidore_v1", "ImageNet-1K", "ViDoRe_arxivqa",
    ]  # fmt: skip
    model = HashEmbedder()
    metrics = source.evaluate(model)
    scores = [evaluate_task(t, model, show_progress_bar=False)["score"] for t in source.mmeb_tasks]
    assert metrics["ImageNet-1K"] == scores[0] and metrics["visdoc"] == scores[1]
    assert metrics["overall"] == pytest.approx(sum(scores) / 2)
    single = load_eval_source(os.path.join(root, "video-tasks", "Video-MME"))
    assert [t.name for t in single.mmeb_tasks] == ["Video-MME"]
    with pytest.raises(ValueError, match="is one MMEB-V2 dataset"):
        load_eval_source(os.path.join(root, "video-tasks", "Video-MME"), datasets=["K700"])


def test_cli_baseline_path_names_what_the_model_cannot_embed(root, tmp_path, saved_backbone):
    # --baseline last-token goes through the same pipeline; a text-only backbone cannot embed
    # an image query, and the check before the run says so, naming the dataset.
    from btok_model.evaluate import main

    argv = ["--model", str(saved_backbone), "--baseline", "last-token", "--mmeb-v2", root, "--datasets", "ImageNet-1K"]
    with pytest.raises(SystemExit, match="error: ImageNet-1K: the model cannot embed its inputs"):
        main([*argv, "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--no-progress-bar"])
    assert not os.listdir(tmp_path / "out" / "datasets")  # nothing was evaluated
