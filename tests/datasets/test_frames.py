"""The authors' two frame samplers: training's ``int(i * step)`` and evaluation's ``linspace``."""

import numpy as np
import pytest

from btok_model.datasets.frames import sample_frames_eval, sample_frames_train


@pytest.mark.parametrize(
    "total, num_frames, want",
    [
        (0, 8, []),
        (1, 8, [0]),
        (3, 8, [0, 1, 2]),  # fewer frames than asked: every frame
        (8, 8, list(range(8))),
        (9, 8, [0, 1, 2, 3, 4, 5, 6, 7]),
        (10, 8, [0, 1, 2, 3, 5, 6, 7, 8]),
        (168, 8, [0, 21, 42, 63, 84, 105, 126, 147]),  # the docs' c01_0001, c01_0022, ...
        (5, 1, [0]),  # one frame: the first
        (7, 3, [0, 2, 4]),
    ],
)
def test_training_sampler_is_the_authors_loader(total, num_frames, want):
    assert sample_frames_train(total, num_frames) == want


@pytest.mark.parametrize(
    "total, num_frames, want",
    [
        (0, 8, []),
        (1, 8, [0]),
        (3, 8, [0, 1, 2]),  # fewer frames than asked: every frame
        (8, 8, list(range(8))),
        (9, 8, [0, 1, 2, 3, 4, 5, 6, 8]),
        (10, 8, [0, 1, 2, 3, 5, 6, 7, 9]),  # ends on the last frame (training's ends on frame 8)
        (20, 8, [0, 2, 5, 8, 10, 13, 16, 19]),
        (5, 1, [0]),  # one frame: the first
        (7, 3, [0, 3, 6]),
        (12, 0, list(range(12))),  # 0: every frame
    ],
)
def test_evaluation_sampler_is_the_authors_linspace(total, num_frames, want):
    assert sample_frames_eval(total, num_frames) == want


def test_evaluation_sampler_matches_numpy_linspace():
    for n in (9, 10, 31, 64, 1000):
        assert sample_frames_eval(n, 8) == np.linspace(0, n - 1, 8).astype(int).tolist()


@pytest.mark.parametrize("sampler, low", [(sample_frames_train, 1), (sample_frames_eval, 0)])
def test_bad_counts_are_refused_by_name(sampler, low):
    with pytest.raises(ValueError, match=f"num_frames must be an int >= {low}"):
        sampler(10, low - 1)
    with pytest.raises(ValueError, match="num_frames must be an int"):
        sampler(10, 2.0)
    with pytest.raises(ValueError, match="total must be an int >= 0"):
        sampler(-1, 8)
    assert sampler(np.int64(10), np.int64(2)) == sampler(10, 2)
