"""``evaluate --image-min-pixels/--image-max-pixels/--video-*-pixels``: a saved model, an untrained
``--baseline`` backbone or a foreign checkpoint is scored with the pixel limits given (the
authors' for Qwen2-VL), not the processor's defaults."""

import pytest

from btok_model.embedder.backbone import processor_parts
from btok_model.evaluate import AUTHORS_PIXELS, load_embedder, parser, pixel_limits
from tests.helpers.tiny import IMAGE_TOKEN, MERGE, PATCH, image, tiny_btok, tiny_vl_btok
from tests.helpers.training import vl_folder

SIDE = PATCH * MERGE  # one merged image token covers SIDE x SIDE pixels


def _args(*flags):
    return parser().parse_args(["--data", "x.jsonl", "--attn-implementation", "sdpa", "--device", "cpu", *flags])


def _image_tokens(model, picture) -> int:
    ids = model.collator.tokenize([{"text": "what is this", "image": picture}])[0]
    return sum(i == IMAGE_TOKEN for i in ids)


def test_authors_values_quoted_in_help():
    assert AUTHORS_PIXELS == {"image_min_pixels": 3136, "image_max_pixels": 1003520, "video_max_pixels": 602112}
    assert pixel_limits(_args("--image-max-pixels", "9", "--video-max-pixels", "7")) == ((None, 9), (None, 7))


@pytest.mark.parametrize("kind", ["saved-btok-model", "baseline-backbone"])
def test_pixel_limits_reach_the_processor(tmp_path, kind):
    if kind == "saved-btok-model":
        tiny_vl_btok(attn="sdpa").save_pretrained(tmp_path / "m")
        flags = ["--model", str(tmp_path / "m")]
    else:
        flags = ["--model", str(vl_folder(tmp_path, "qwen2_vl")), "--baseline", "last-token"]
    picture = image(4 * SIDE, 6 * SIDE, 0)  # 24 merged tokens at full size
    default = load_embedder(_args(*flags, "--torch-dtype", "float32"))
    limited = load_embedder(
        _args(
            *flags,
            "--torch-dtype",
            "float32",
            "--image-min-pixels",
            str(SIDE * SIDE),
            "--image-max-pixels",
            str(2 * SIDE * SIDE),
        )
    )
    size = processor_parts(limited.processor)[1].size
    assert (size["shortest_edge"], size["longest_edge"]) == (SIDE * SIDE, 2 * SIDE * SIDE)
    assert _image_tokens(limited, picture) <= 2 < _image_tokens(default, picture)


def test_pixel_limits_on_a_text_model_are_refused(tmp_path, capsys):
    tiny_btok(attn="sdpa").save_pretrained(tmp_path / "text")
    with pytest.raises(SystemExit, match="error: --image-\\*/--video-\\*-pixels apply to vision-language models"):
        load_embedder(_args("--model", str(tmp_path / "text"), "--image-max-pixels", "3136"))
    with pytest.raises(SystemExit):
        parser().parse_args(["--image-max-pixels", "0"])
    assert "expected an int >= 1, got '0'" in capsys.readouterr().err
