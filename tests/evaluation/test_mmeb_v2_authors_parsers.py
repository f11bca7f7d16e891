"""btok's MMEB-V2 prompts against the authors' parsers, family by family, on the same raw rows.

Each ``_theirs_*`` function below follows, step by step, the ``canonical`` path (their default
runtime mode) of the authors' parser for that family (github siryuson/BottleneckTokens,
``src/vlm2emb/data/datasets/mmeb_v2/parsers/``: the shared helpers ``process_input_text``,
``format_choice_template``, ``compose_parser_text_with_instruction``, ``take_video_frames``, and
``const.normalize_text_whitespace``); btok's :mod:`btok_model.evaluation.mmeb_v2_inputs` is
written differently (one composer per family), so the two are independent computations of the
same strings. Rows carry the whitespace accidents of raw data on purpose.
"""

import numpy as np
import pytest

from btok_model.evaluation.mmeb_v2_index import DATASETS
from btok_model.evaluation.mmeb_v2_inputs import dataset_inputs

IMAGE, VIDEO = "<|image_pad|>", "<|video_pad|>"
VIDEO_QA_PREFIX = (
    "Given a video and a question, select the most accurate answer from the provided candidates. "
    "Return only the exact text of your chosen answer. Question: "
)
FRAMES = [f"frame-{i}".encode() for i in range(20)]


# -- the authors' shared helpers, canonical mode -----------------------------------------------------
def _normalize(text, ensure_trailing_newline=False):  # const.normalize_text_whitespace
    if text is None:
        return ""
    out = text.replace("\r\n", "\n").replace("\r", "\n")
    out = "\n".join(line.rstrip(" \t") for line in out.split("\n"))
    out = out.lstrip(" \t").rstrip(" \t")
    if not out.strip(" \t\n"):
        return ""
    return out.rstrip("\n") + "\n" if ensure_trailing_newline else out


def _process(instruction, text=None, image=False, video=False, separator=" "):  # shared.process_input_text
    prompt = instruction
    if text:
        prompt = prompt + " " + text
    if video:
        prompt = VIDEO + separator + prompt
    if image:
        prompt = IMAGE + separator + prompt
    return prompt


def _compose(text, instruction, image=False, video=False, separator=" ", newline=False):
    # shared.compose_parser_text_with_instruction (no space-newline replacement, no blank line)
    out = _process(instruction, text or None, image, video, separator)
    return out + "\n" if newline else out


def _choices(question, options):  # shared.format_choice_template
    out = f"{question}\nOptions:\n"
    for i, option in enumerate(options):
        out += f"({chr(ord('A') + i)}) {option}\n"
    return out.rstrip()


def _frames(frames, num_frames=8):  # shared.take_video_frames
    frames = [f for f in frames if f is not None]
    if len(frames) > num_frames:
        return [frames[i] for i in np.linspace(0, len(frames) - 1, num_frames, dtype=int).tolist()]
    return frames


# -- video classification: video_classification.py (K700, UCF101, HMDB51, Breakfast), ssv2.py ---------
VIDEO_CLS = {
    "K700": "Recognize the category of the video content.",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video. ",  # rstripped in canonical
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
}


def _theirs_video_cls_query(name, row):
    instruction = VIDEO_CLS[name].rstrip() if name == "Breakfast" else VIDEO_CLS[name]
    return _compose("", instruction, video=True, separator="\n", newline=True)


# -- video retrieval: msrvtt.py, msvd.py, didemo.py, vatex.py, youcook2.py -----------------------------
VIDEO_RET = {  # dataset: (field, prefix, lists accepted)
    "MSR-VTT": ("caption", "Find a video that contains the following visual content:", True),
    "MSVD": ("caption", "Find the video snippet that corresponds to the given summary:", True),
    "DiDeMo": ("caption", "Find a video that includes the following described scenes:", False),
    "VATEX": ("enCap", "Select a video that fits the description provided:", True),
    "YouCook2": ("sentence", "Find a video that demonstrates the following action while making a recipe:", False),
}


def _theirs_video_ret_query(name, row):
    field, prefix, lists = VIDEO_RET[name]
    raw = row.get(field)
    if lists and isinstance(raw, list):
        raw = next((str(v) for v in raw if isinstance(v, str) and v.strip()), "")
    text = _normalize(str(raw or "")).rstrip("\n")
    return _compose(text, prefix, newline=True)


def _theirs_video_candidate(prefix="Understand the content of the provided video."):
    return _compose("", prefix, video=True, separator="\n", newline=True)


# -- video QA: activitynetqa.py, egoschema.py, mvbench.py, nextqa.py, videomme.py -----------------------
def _theirs_video_qa_query(name, row):
    question = _normalize(row["question"]).rstrip("\n")
    if name == "ActivityNetQA":
        text = question + "? (A) yes; (B) no."
    elif name == "EgoSchema":
        options = row.get("option") or []
        joined = " ".join(str(v) for v in options if v is not None) if isinstance(options, list) else str(options)
        text = question + joined
    elif name == "MVBench":
        options = [_normalize(str(v)).rstrip("\n") for v in row.get("candidates") or [] if v is not None]
        text = _choices(question, options)
    elif name == "NExTQA":
        text = _choices(question, [_normalize(row[f"a{i}"]).rstrip("\n") for i in range(5)])
    else:  # Video-MME
        text = question + "\n" + "\n".join(str(v) for v in row.get("options") or [] if v is not None)
    return _process(VIDEO_QA_PREFIX, text, video=True, separator="\n") + "\n"


def _theirs_video_qa_candidate(name, row):
    text = str(row.get("text") or "")
    return _normalize(text).rstrip("\n") if name in ("MVBench", "NExTQA") else text


# -- moment retrieval: moment_retrieval.py (QVHighlight, Charades-STA), momentseeker.py ----------------
def _theirs_moment_query(name, row):
    query = _normalize(row["query"]).rstrip("\n")
    if name != "MomentSeeker":
        prefix = "Find the clip that corresponds to the described scene in the given video:"
        return _compose(query, prefix, video=True, separator="\n", newline=True)
    if row.get("image") is not None and not row.get("video"):
        prefix = "Select the video clip that aligns with the given text and image:"
        return _compose(query, prefix, image=True, separator="\n", newline=True)
    if row.get("video"):
        prefix = "Find the clip that corresponds to the given sentence and video segment:"
        return _compose(query, prefix, video=True, separator="\n", newline=True)
    return _compose(query, "Find the clip that corresponds to the given text:", newline=True)


# -- visual documents: vidore.py, visrag.py (every visdoc dataset) -------------------------------------
def _theirs_visdoc_query(row):
    text = f"Find a document image that matches the given query: {row['query']}\n"
    return _normalize(text, ensure_trailing_newline=True)


def _theirs_visdoc_candidate():
    return f"{IMAGE}\nUnderstand the content of the provided document image.\n"


# -- images: image_cls.py, image_qa.py, image_i2t.py, image_t2i.py, image_i2i_vg.py ---------------------
LEGACY = ("<|image_1|>", "<image>")
CROPPED = "Represent the given cropped image of the object"


def _scalar(value):  # their _string_scalar
    if isinstance(value, list):
        return _scalar(value[0]) if value else ""
    return "" if value is None else str(value)


def _replace_legacy(text, replacement=IMAGE):
    for token in LEGACY:
        text = text.replace(token, replacement)
    return text


def _strip_legacy(text):
    return _normalize(_replace_legacy(text, "")).lstrip("\n")


def _clean_instruction(raw, leading_newline):
    cleaned = _replace_legacy(raw, "").strip()
    return "\n" + cleaned if cleaned and leading_newline else cleaned


def _with_instruction(text, instruction, leading_newline, newline=True):
    # compose_parser_text_with_instruction(add_image_token, replace_space_newline=True)
    out = _process(_clean_instruction(instruction, leading_newline), text or None, image=True)
    out = out.replace(" \n", "\n")
    return out + "\n" if newline else out


def _theirs_image_query(family, name, row):
    text, inst, media = _scalar(row.get("qry_text")), _scalar(row.get("qry_inst")), row.get("image") is not None
    if family == "i2i_vg":
        text, inst = str(row.get("qry_text") or ""), str(row.get("qry_inst") or "")
        if media and inst:
            return _with_instruction(text, inst, leading_newline=True)
        return _replace_legacy(text) if media and text else text
    if family == "t2i":
        if name == "VisDial":
            if text.endswith("\n\n"):
                text = text[:-1]
            prefix, separator, body = text.partition(": ")
            if separator and (body.startswith("Q:") or "\nQ:" in body or "\nA:" in body):
                text = f"{prefix}:\n{body}"
        return _strip_legacy(text) if name in ("EDIS", "WebQA") else _replace_legacy(text)
    if media and inst and family == "qa":
        out = _with_instruction(text, inst, leading_newline=True)
    elif media and text:
        out = _replace_legacy(text)
    else:
        return _strip_legacy(text)
    if family == "qa" and name == "VizWiz":
        out = _normalize(out, ensure_trailing_newline=out.endswith("\n"))
    return out


def _theirs_image_candidate(family, name, row):
    if family in ("cls", "qa", "i2t"):
        return _scalar(row.get("text"))
    text, inst, media = _scalar(row.get("tgt_text")), _scalar(row.get("tgt_inst")), row.get("image") is not None
    if family == "t2i":
        if media and inst:
            caption = bool(text.strip())
            out = _with_instruction(text if caption else "", inst, leading_newline=False, newline=True)
        elif media and text:
            out = _replace_legacy(text)
        else:
            out = text
        if name == "VisDial":
            out = _replace_legacy(out)
            if out.startswith(IMAGE):
                body = out[len(IMAGE) :].lstrip(" \n")
                out = f"{IMAGE}\n" if not body else f"{IMAGE}\n{body.rstrip(chr(10))}" + "\n" * out.endswith("\n")
        return out
    text = str(row.get("tgt_text") or "")  # i2i_vg: no instruction is read on this side
    out = _replace_legacy(text) if media and text else text
    if name in ("Visual7W-Pointing", "MSCOCO", "RefCOCO"):
        normalized = _replace_legacy(out).rstrip("\n")
        if normalized.startswith(IMAGE + "\n") and normalized[len(IMAGE) + 1 :].strip() in (CROPPED, CROPPED + "."):
            out = f"{IMAGE}\n{CROPPED}.\n"
    return out


def _ours(name, side, row):
    inputs = dataset_inputs(name)
    return (inputs.query if side == "query" else inputs.candidate).build({"id": 0, **row}, 8)


def _names(meta_tasks):
    return [d.name for d in DATASETS if d.meta_task in meta_tasks]


@pytest.mark.parametrize("name", _names({"video_classification"}))
def test_video_classification(name):
    row = {"video": FRAMES}
    ours = _ours(name, "query", row)
    assert ours.text == _theirs_video_cls_query(name, row) and ours.frames == _frames(FRAMES)
    for label in ("playing guitar", "pouring milk "):
        assert _ours(name, "candidate", {"text": label}).text == str(label or "")


@pytest.mark.parametrize("name", _names({"video_retrieval"}))
def test_video_retrieval(name):
    field, _, lists = VIDEO_RET[name]
    captions = ["  a man  cooks pasta \t\n\n", "a dog\r\nruns  "]
    if lists:
        captions.append(["", "  ", " first real caption \n", "second"])
    for caption in captions:
        row = {field: caption}
        assert _ours(name, "query", row).text == _theirs_video_ret_query(name, row), caption
    candidate = _ours(name, "candidate", {"video": FRAMES[:5]})
    assert candidate.text == _theirs_video_candidate() and candidate.frames == _frames(FRAMES[:5])


VIDEO_QA_ROWS = {
    "ActivityNetQA": {"question": " is the man  running \n"},
    "EgoSchema": {"question": "What does C do? ", "option": ["A. cooks.", "B. reads.", None, "C. sleeps."]},
    "MVBench": {"question": "What happens next?\n", "candidates": [" the cup falls ", "it\r\nstays", None]},
    "NExTQA": {"question": "why did the boy smile", **{f"a{i}": f" answer {i} \n" for i in range(5)}},
    "Video-MME": {"question": "How many people?  ", "options": ["A. One.", "B. Two.", None, "C. Three."]},
}


@pytest.mark.parametrize("name", _names({"video_question_answer"}))
def test_video_question_answer(name):
    row = {**VIDEO_QA_ROWS[name], "video": FRAMES}
    ours = _ours(name, "query", row)
    assert ours.text == _theirs_video_qa_query(name, row) and ours.frames == _frames(FRAMES)
    for text in (" the cup falls  \n", "B. Two."):
        assert _ours(name, "candidate", {"text": text}).text == _theirs_video_qa_candidate(name, {"text": text})


@pytest.mark.parametrize("name", _names({"video_moment_retrieval"}))
def test_moment_retrieval(name):
    rows = [{"query": " a person opens the door \n", "video": FRAMES}]
    if name == "MomentSeeker":
        rows += [{"query": "the red car", "image": b"png"}, {"query": "someone waves  "}]
    for row in rows:
        assert _ours(name, "query", row).text == _theirs_moment_query(name, row), row["query"]
    prefix = "Understand the content of the provided video clip." if name == "MomentSeeker" else None
    expected = _theirs_video_candidate(prefix) if prefix else _theirs_video_candidate()
    assert _ours(name, "candidate", {"video": FRAMES}).text == expected


@pytest.mark.parametrize("name", _names({"visdoc_vidore_v1", "visdoc_vidore_v2", "visdoc_visrag", "visdoc_ood"}))
def test_visual_documents(name):
    for query in ("What is the total revenue in 2019?", "  revenue\t\n\n", "line one  \r\nline two"):
        assert _ours(name, "query", {"query": query}).text == _theirs_visdoc_query({"query": query}), query
    candidate = _ours(name, "candidate", {"image": b"png"})
    assert candidate.text == _theirs_visdoc_candidate() and candidate.image == b"png"


def test_every_video_and_visdoc_dataset_is_compared():
    compared = _names(
        {
            "video_classification",
            "video_retrieval",
            "video_question_answer",
            "video_moment_retrieval",
            "visdoc_vidore_v1",
            "visdoc_vidore_v2",
            "visdoc_visrag",
            "visdoc_ood",
        }
    )
    assert len(compared) == 18 + 24


IMAGE_FAMILIES = {
    "cls": [
        "HatefulMemes",
        "VOC2007",
        "SUN397",
        "Place365",
        "ImageNet-A",
        "ImageNet-R",
        "ObjectNet",
        "Country211",
        "N24News",
        "ImageNet-1K",
    ],
    "qa": [
        "VizWiz",
        "ChartQA",
        "ScienceQA",
        "GQA",
        "A-OKVQA",
        "DocVQA",
        "InfographicsVQA",
        "Visual7W",
        "TextVQA",
        "OK-VQA",
    ],
    "i2t": ["MSCOCO_i2t", "VisualNews_i2t"],
    "t2i": ["VisualNews_t2i", "Wiki-SS-NQ", "EDIS", "WebQA", "MSCOCO_t2i", "VisDial"],
    "i2i_vg": ["NIGHTS", "OVEN", "FashionIQ", "CIRR", "Visual7W-Pointing", "MSCOCO", "RefCOCO", "RefCOCO-Matching"],
}
PNG = b"png"
IMAGE_QUERY_ROWS = [
    {"qry_text": "<|image_1|>\nRepresent the given image for classification\n", "image": PNG},
    {"qry_text": "<|image_1|> Find a caption for the news in the given photo.\n", "image": PNG},
    {
        "qry_text": "Question one?",
        "qry_inst": "<|image_1|> Represent the given image with the following question:",
        "image": PNG,
    },
    {"qry_text": "What is  this? \n", "qry_inst": "<image> Answer the question: \n", "image": PNG},
    {"qry_text": "<|image_1|>\nRepresent the given image with the following question: What is this? \n", "image": PNG},
    {"qry_text": "Find me an everyday image that matches the given caption: a red bus.\n"},
    {"qry_text": "<|image_1|> Find a photo of the dog described here: brown dog\n"},
    {"qry_text": "Represent the given dialogue about an image: Q: what is it\nA: a cat\n\n"},
    {"qry_text": ["<|image_1|>\nfirst of a list", "second"], "image": PNG},
]
IMAGE_CANDIDATE_ROWS = [
    {"text": "tench"},
    {"text": ["a list label", "other"]},
    {"tgt_text": "<|image_1|>\nRepresent the given image.\n", "image": PNG},
    {"tgt_text": "a caption", "tgt_inst": "<|image_1|> Represent the given image with the caption:", "image": PNG},
    {"tgt_text": "  ", "tgt_inst": "<|image_1|> Represent the given image.", "image": PNG},
    {"tgt_text": "<|image_1|> Represent the given cropped image of the object", "image": PNG},
    {"tgt_text": "<|image_1|>\nRepresent the given cropped image of the object.\n", "image": PNG},
    {"tgt_text": "<|image_1|> photo of a dog", "image": PNG},
    {"tgt_text": "Represent the given cropped image of the object"},
]


@pytest.mark.parametrize("family", sorted(IMAGE_FAMILIES))
def test_images(family):
    for name in IMAGE_FAMILIES[family]:
        for row in IMAGE_QUERY_ROWS:
            if family in ("t2i",) and "image" in row:
                continue  # their t2i queries are text (no image column read)
            if family == "i2i_vg" and isinstance(row["qry_text"], list):
                continue  # their i2i/VG parser reads a str field (a list would print as a list)
            if "qry_inst" in row and name not in ("A-OKVQA", "OK-VQA", "CIRR"):
                row = {k: v for k, v in row.items() if k != "qry_inst"}  # the column is read for these only
            assert _ours(name, "query", row).text == _theirs_image_query(family, name, row), (name, row)
        for row in IMAGE_CANDIDATE_ROWS:
            text_side = family in ("cls", "qa", "i2t")
            if text_side != ("text" in row):
                continue
            if "tgt_inst" in row and name not in ("WebQA", "VisDial"):
                row = {k: v for k, v in row.items() if k != "tgt_inst"}  # read for these only
            assert _ours(name, "candidate", row).text == _theirs_image_candidate(family, name, row), (name, row)


def test_every_image_dataset_is_compared():
    assert sorted(n for names in IMAGE_FAMILIES.values() for n in names) == sorted(
        d.name for d in DATASETS if d.modality == "image"
    )
