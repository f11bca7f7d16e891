"""btok's MMEB-V2 prompts in the authors' ``origin`` mode against their parsers, on the same raw rows.

Each ``_origin_*`` function follows the ``runtime_mode="origin"`` path of the authors' parser for
that family (github siryuson/BottleneckTokens, ``src/vlm2emb/data/datasets/mmeb_v2/parsers/``;
the mode is selected by ``evaluation/benchmarks/mmeb.py``, which passes ``runtime_mode`` into every
parser's transform kwargs): their ``*_token_separator_origin`` (``" "``) and
``*_append_trailing_newline_origin`` (False) defaults, ``_normalize_for_mode`` returning the text
as stored, the visual-document ``mode == "origin"`` branches, and the ``is_canonical`` guards of
the image repairs. The mode-independent helpers (``process_input_text`` ...) are the ones written
out in :mod:`tests.evaluation.test_mmeb_v2_authors_parsers`.
"""

import pytest

from btok_model.evaluation.mmeb_v2_index import DATASETS
from btok_model.evaluation.mmeb_v2_inputs import MODES, dataset_inputs
from tests.evaluation.test_mmeb_v2_authors_parsers import (
    FRAMES,
    IMAGE,
    IMAGE_CANDIDATE_ROWS,
    IMAGE_FAMILIES,
    IMAGE_QUERY_ROWS,
    VIDEO_CLS,
    VIDEO_QA_PREFIX,
    VIDEO_QA_ROWS,
    VIDEO_RET,
    _choices,
    _compose,
    _frames,
    _names,
    _process,
    _replace_legacy,
    _scalar,
    _strip_legacy,
    _with_instruction,
)

VIDEO_CANDIDATE = "Understand the content of the provided video."
EXTRA_QUERY = {"qry_text": "<|image_1|> What is the title of this book? \n", "image": b"p"}  # VizWiz's repair
EXTRA_CANDIDATE = {"tgt_text": "<|image_1|>\nRepresent the given cropped image of the object\n", "image": b"p"}


def _ours(name, side, row, mode="origin"):
    inputs = dataset_inputs(name, mode=mode)
    return (inputs.query if side == "query" else inputs.candidate).build({"id": 0, **row}, 8)


# -- their origin paths ----------------------------------------------------------------------------------
def _origin_video_cls_query(name):  # video_classification.py / ssv2.py: Breakfast keeps its trailing space
    return _compose("", VIDEO_CLS[name], video=True, separator=" ", newline=False)


def _origin_video_candidate(prefix=VIDEO_CANDIDATE):  # msrvtt.py ... moment_retrieval.py, momentseeker.py
    return _compose("", prefix, video=True, separator=" ", newline=False)


def _origin_video_ret_query(name, row):  # the caption as stored
    field, prefix, lists = VIDEO_RET[name]
    raw = row.get(field)
    if lists and isinstance(raw, list):
        raw = next((str(v) for v in raw if isinstance(v, str) and v.strip()), "")
    return _compose(str(raw or ""), prefix, newline=False)


def _origin_video_qa_query(name, row):
    question = row["question"]
    if name == "ActivityNetQA":
        text = question + "? (A) yes; (B) no."
    elif name == "EgoSchema":
        options = row.get("option") or []
        joined = " ".join(str(v) for v in options if v is not None) if isinstance(options, list) else str(options)
        text = question + joined
    elif name == "MVBench":
        text = _choices(question, [str(v) for v in row.get("candidates") or [] if v is not None])
    elif name == "NExTQA":
        text = _choices(question, [row[f"a{i}"] for i in range(5)])
    else:  # Video-MME
        text = question + "\n" + "\n".join(str(v) for v in row.get("options") or [] if v is not None)
    return _process(VIDEO_QA_PREFIX, text, video=True, separator=" ")


def _origin_moment_query(name, row):
    query = row["query"]
    if name != "MomentSeeker":
        prefix = "Find the clip that corresponds to the described scene in the given video:"
        return _compose(query, prefix, video=True, separator=" ")
    if row.get("image") is not None and not row.get("video"):
        return _compose(query, "Select the video clip that aligns with the given text and image:", image=True)
    if row.get("video"):
        return _compose(query, "Find the clip that corresponds to the given sentence and video segment:", video=True)
    return _compose(query, "Find the clip that corresponds to the given text:")


def _origin_visdoc_query(row):  # vidore.py / visrag.py _compose_query_text(mode="origin")
    return f"Find a document image that matches the given query: {row['query']}"


def _origin_visdoc_candidate():
    return f"{IMAGE} Understand the content of the provided document image."


def _origin_image_query(family, name, row):  # canonical's VizWiz and VisDial repairs are off
    text, inst, media = _scalar(row.get("qry_text")), _scalar(row.get("qry_inst")), row.get("image") is not None
    if family == "i2i_vg":
        text, inst = str(row.get("qry_text") or ""), str(row.get("qry_inst") or "")
        if media and inst:
            return _with_instruction(text, inst, leading_newline=True)
        return _replace_legacy(text) if media and text else text
    if family == "t2i":
        return _strip_legacy(text) if name in ("EDIS", "WebQA") else _replace_legacy(text)
    if media and inst and family == "qa":
        return _with_instruction(text, inst, leading_newline=True)
    if media and text:
        return _replace_legacy(text)
    return _strip_legacy(text)


def _origin_image_candidate(family, name, row):  # no VisDial block layout, no cropped-object sentence
    if family in ("cls", "qa", "i2t"):
        return _scalar(row.get("text"))
    text, inst, media = _scalar(row.get("tgt_text")), _scalar(row.get("tgt_inst")), row.get("image") is not None
    if family == "t2i":
        if media and inst:
            return _with_instruction(text if text.strip() else "", inst, leading_newline=False, newline=True)
        return _replace_legacy(text) if media and text else text
    text = str(row.get("tgt_text") or "")
    return _replace_legacy(text) if media and text else text


# -- the comparisons, one per family ------------------------------------------------------------------
@pytest.mark.parametrize("name", _names({"video_classification"}))
def test_video_classification_origin(name):
    ours = _ours(name, "query", {"video": FRAMES})
    assert ours.text == _origin_video_cls_query(name) and ours.frames == _frames(FRAMES)
    assert _ours(name, "candidate", {"text": "pouring milk "}).text == "pouring milk "


@pytest.mark.parametrize("name", _names({"video_retrieval"}))
def test_video_retrieval_origin(name):
    field, _, lists = VIDEO_RET[name]
    captions = ["  a man  cooks pasta \t\n\n", "a dog\r\nruns  "]
    if lists:
        captions.append(["", "  ", " first real caption \n", "second"])
    for caption in captions:
        row = {field: caption}
        assert _ours(name, "query", row).text == _origin_video_ret_query(name, row), caption
    candidate = _ours(name, "candidate", {"video": FRAMES[:5]})
    assert candidate.text == _origin_video_candidate() and candidate.frames == _frames(FRAMES[:5])


@pytest.mark.parametrize("name", _names({"video_question_answer"}))
def test_video_question_answer_origin(name):
    row = {**VIDEO_QA_ROWS[name], "video": FRAMES}
    ours = _ours(name, "query", row)
    assert ours.text == _origin_video_qa_query(name, row) and ours.frames == _frames(FRAMES)
    for text in (" the cup falls  \n", "B. Two."):  # answers as stored (canonical cleans NExTQA's and MVBench's)
        assert _ours(name, "candidate", {"text": text}).text == text


@pytest.mark.parametrize("name", _names({"video_moment_retrieval"}))
def test_moment_retrieval_origin(name):
    rows = [{"query": " a person opens the door \n", "video": FRAMES}]
    if name == "MomentSeeker":
        rows += [{"query": "the red car", "image": b"png"}, {"query": "someone waves  "}]
    for row in rows:
        assert _ours(name, "query", row).text == _origin_moment_query(name, row), row["query"]
    prefix = "Understand the content of the provided video clip." if name == "MomentSeeker" else VIDEO_CANDIDATE
    assert _ours(name, "candidate", {"video": FRAMES}).text == _origin_video_candidate(prefix)


@pytest.mark.parametrize("name", _names({"visdoc_vidore_v1", "visdoc_vidore_v2", "visdoc_visrag", "visdoc_ood"}))
def test_visual_documents_origin(name):
    for query in ("What is the total revenue in 2019?", "  revenue\t\n\n", "line one  \r\nline two"):
        assert _ours(name, "query", {"query": query}).text == _origin_visdoc_query({"query": query}), query
    candidate = _ours(name, "candidate", {"image": b"png"})
    assert candidate.text == _origin_visdoc_candidate() and candidate.image == b"png"


@pytest.mark.parametrize("family", sorted(IMAGE_FAMILIES))
def test_images_origin(family):
    for name in IMAGE_FAMILIES[family]:
        for row in IMAGE_QUERY_ROWS + [EXTRA_QUERY]:
            if family == "t2i" and "image" in row:
                continue  # their t2i queries are text (no image column read)
            if family == "i2i_vg" and isinstance(row["qry_text"], list):
                continue  # their i2i/VG parser reads a str field
            if "qry_inst" in row and name not in ("A-OKVQA", "OK-VQA", "CIRR"):
                row = {k: v for k, v in row.items() if k != "qry_inst"}
            assert _ours(name, "query", row).text == _origin_image_query(family, name, row), (name, row)
        for row in IMAGE_CANDIDATE_ROWS + [EXTRA_CANDIDATE]:
            if (family in ("cls", "qa", "i2t")) != ("text" in row):
                continue
            if "tgt_inst" in row and name not in ("WebQA", "VisDial"):
                row = {k: v for k, v in row.items() if k != "tgt_inst"}
            assert _ours(name, "candidate", row).text == _origin_image_candidate(family, name, row), (name, row)


# -- where the two modes differ ---------------------------------------------------------------------------
def _rows(name):
    meta = next(d for d in DATASETS if d.name == name).meta_task
    if meta.startswith("video_") or meta.startswith("visdoc"):
        field = VIDEO_RET.get(name, ("caption",))[0]
        query = {
            "video": FRAMES,
            field: " a caption \n",
            "query": " a query \n",
            **VIDEO_QA_ROWS.get(name, {"question": "q "}),
        }
        return [("query", query), ("candidate", {"video": FRAMES, "image": b"png", "text": " the cup falls \n"})]
    queries = [r for r in IMAGE_QUERY_ROWS + [EXTRA_QUERY] if not isinstance(r["qry_text"], list)]
    return [("query", r) for r in queries] + [("candidate", r) for r in IMAGE_CANDIDATE_ROWS + [EXTRA_CANDIDATE]]


def test_the_modes_differ_where_the_authors_differ():
    differ = set()
    for d in DATASETS:
        for side, row in _rows(d.name):
            try:
                canonical = _ours(d.name, side, row, mode="canonical").text
            except (ValueError, KeyError, TypeError):
                continue
            if _ours(d.name, side, row, mode="origin").text != canonical:
                differ.add(d.name)
    video_and_visdoc = {d.name for d in DATASETS if d.modality != "image"}
    repaired_images = {"VizWiz", "VisDial", "Visual7W-Pointing", "MSCOCO", "RefCOCO"}
    assert differ == video_and_visdoc | repaired_images


def test_mode_is_checked():
    from btok_model.evaluate import MMEB_MODES

    assert MODES == MMEB_MODES == ("canonical", "origin")  # the flag's choices, kept apart for a light --help
    with pytest.raises(ValueError, match=r"mode must be one of canonical, origin, got 'orign'"):
        dataset_inputs("K700", mode="orign")
