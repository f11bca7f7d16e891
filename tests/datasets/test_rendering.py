"""The shared rendering rules: whitespace, legacy markers, the leading-placeholder strip in its
training (own line) and evaluation (inline) forms."""

import pytest

from btok_model.datasets.rendering import (
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    FieldError,
    normalize_whitespace,
    replace_legacy_tokens,
    strip_leading_placeholder,
)


def test_normalize_whitespace():
    assert normalize_whitespace(" a \r\nb\t \n\n") == "a\nb\n\n"  # newlines at the ends stay
    assert normalize_whitespace(" a \r\nb\t \n\n", final_newline=True) == "a\nb\n"
    assert normalize_whitespace("x", final_newline=True) == "x\n"
    for blank in (None, "", " \t", "\n \n", "\r\n"):
        assert normalize_whitespace(blank) == "" and normalize_whitespace(blank, final_newline=True) == ""


def test_legacy_markers_read_as_their_placeholder_or_go():
    assert replace_legacy_tokens("<|image_1|> a <image>") == f"{IMAGE_TOKEN} a {IMAGE_TOKEN}"
    assert replace_legacy_tokens("<|image_1|> a <video>", replacement="") == " a <video>"
    assert replace_legacy_tokens("<video>\nq <image>", VIDEO_TOKEN) == f"{VIDEO_TOKEN}\nq <image>"


@pytest.mark.parametrize(
    "text, want",
    [
        (IMAGE_TOKEN, None),
        (f"{IMAGE_TOKEN}\n", ""),
        (f"{IMAGE_TOKEN}\nwhat?\n", "what?\n"),
        (f"{IMAGE_TOKEN}\n a", " a"),
    ],
)
def test_training_strip_takes_the_placeholder_line(text, want):
    assert strip_leading_placeholder(text, IMAGE_TOKEN) == want


@pytest.mark.parametrize(
    "text, message",
    [
        (f"{IMAGE_TOKEN} what", "does not start a line of its own"),  # inline: the evaluation's form only
        (f"what {IMAGE_TOKEN}", "does not start a line of its own"),
        ("what", "must hold the placeholder <\\|image_pad\\|> once"),
        (f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}", "must hold the placeholder <\\|image_pad\\|> once"),
    ],
)
def test_training_strip_refuses_other_forms(text, message):
    with pytest.raises(FieldError, match=message):
        strip_leading_placeholder(text, IMAGE_TOKEN)


@pytest.mark.parametrize(
    "text, want",
    [
        (VIDEO_TOKEN, None),
        (f"{VIDEO_TOKEN}\n", ""),
        (f"{VIDEO_TOKEN}\nwatch\n", "watch\n"),
        (f"{VIDEO_TOKEN} Recognize it.", "Recognize it."),  # origin mode's inline placeholder
        (f"{VIDEO_TOKEN}\n\nx", "\nx"),  # one separator goes, no more
        (f"{VIDEO_TOKEN}x", "x"),
    ],
)
def test_evaluation_strip_takes_one_separator(text, want):
    assert strip_leading_placeholder(text, VIDEO_TOKEN, own_line=False) == want


@pytest.mark.parametrize(
    "text, message",
    [
        (f"watch {VIDEO_TOKEN}", "the text must start with <\\|video_pad\\|>"),
        (f"{VIDEO_TOKEN}\n{IMAGE_TOKEN}", "more than one image/video placeholder"),  # either token counts
        (f"{VIDEO_TOKEN} {VIDEO_TOKEN}", "more than one image/video placeholder"),
    ],
)
def test_evaluation_strip_refuses_other_forms(text, message):
    with pytest.raises(FieldError, match=message):
        strip_leading_placeholder(text, VIDEO_TOKEN, own_line=False)
