"""Which frames of a video are embedded: the authors' two samplers, one per side of their code.

The authors (siryuson/BottleneckTokens) sample a video's frames with different arithmetic when
they train and when they evaluate, and the two pick different frames of the same video (of 10
frames, 8 asked, training's last is frame 8, evaluation's frame 9). btok reproduces each where
the authors use it, so both live here, named for their side:

* :func:`sample_frames_train` -- their LLaVA-Hound training loader
  (``src/vlm2emb/data/datasets/llavahound.py``): frame ``int(i * (total / num_frames))`` for
  ``i < num_frames``, in float arithmetic; used by :mod:`btok_model.datasets.llavahound_train`.
* :func:`sample_frames_eval` -- their MMEB-V2 evaluation: ``numpy.linspace(0, total - 1,
  num_frames)`` truncated to ints (first and last frame always taken); used by
  :mod:`btok_model.evaluation.mmeb_v2_inputs`.

Both take every frame when a video has ``num_frames`` or fewer, and return frame indices in
increasing order.
"""

from __future__ import annotations

from numbers import Integral

__all__ = ["sample_frames_eval", "sample_frames_train"]


def _check(name: str, value, low: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low} ({what}), got {value!r}")


def sample_frames_train(total: int, num_frames: int) -> list[int]:
    """The frames the authors' training loader takes of a video of ``total`` ordered frames.

    Args:
        total: the video's frame count.
        num_frames: how many to take (>= 1).

    Returns:
        ``range(total)`` when ``total <= num_frames``, else ``int(i * (total / num_frames))`` for
        ``i < num_frames``.

    Raises:
        ValueError: ``total`` below 0 or ``num_frames`` below 1.
    """
    _check("total", total, 0, "the video's frame count")
    _check("num_frames", num_frames, 1, "the frames to take")
    if total <= num_frames:
        return list(range(total))
    step = total / num_frames
    return [int(i * step) for i in range(num_frames)]


def sample_frames_eval(total: int, num_frames: int) -> list[int]:
    """The frames the authors' MMEB-V2 evaluation takes of a video of ``total`` frames.

    Args:
        total: the video's frame count.
        num_frames: how many to take; 0 takes every frame.

    Returns:
        ``range(total)`` when ``num_frames`` is 0 or ``total <= num_frames``, else
        ``numpy.linspace(0, total - 1, num_frames)`` truncated to ints.

    Raises:
        ValueError: ``total`` or ``num_frames`` below 0.
    """
    import numpy as np

    _check("total", total, 0, "the video's frame count")
    _check("num_frames", num_frames, 0, "0: every frame")
    if num_frames and total > num_frames:
        return np.linspace(0, total - 1, num_frames, dtype=int).tolist()
    return list(range(total))
