"""CondensationLayout: constructors, derived quantities and every validation error."""

from __future__ import annotations

import pytest
import torch

from btok_kernels import CondensationLayout
from tests.helpers.oracle import dense_layout_mask


def test_from_lengths_fields():
    lay = CondensationLayout.from_lengths([3, 5, 1], [2, 4, 1], [4, 0, 2])
    assert lay.cu_seqlens.tolist() == [0, 9, 18, 22]
    assert lay.btok_start.tolist() == [3, 5, 1]
    assert lay.target_start.tolist() == [5, 9, 2]
    assert lay.max_seqlen == 9 and lay.num_seqs == 3 and lay.total_tokens == 22
    for t in (lay.cu_seqlens, lay.btok_start, lay.target_start):
        assert t.dtype == torch.int32
    assert lay.seqlens == [9, 9, 4]


def test_from_lengths_int_btoks_and_default_targets():
    lay = CondensationLayout.from_lengths(torch.tensor([2, 7]), 4)
    assert lay.btok_start.tolist() == [2, 7]
    assert lay.target_start.tolist() == [6, 11]  # no target: t == len
    assert lay.cu_seqlens.tolist() == [0, 6, 17]


def test_causal():
    lay = CondensationLayout.causal(torch.tensor([0, 4, 4, 10], dtype=torch.int32))
    assert lay.btok_start.tolist() == [0, 0, 0]
    assert lay.target_start.tolist() == [4, 0, 6]
    assert lay.max_seqlen == 6


def test_bidirectional():
    lay = CondensationLayout.bidirectional([0, 4, 4, 10])
    assert lay.is_causal is False and CondensationLayout.causal([0, 4]).is_causal is True
    assert lay.btok_start.tolist() == [0, 0, 0] and lay.target_start.tolist() == [4, 0, 6]
    assert lay.num_kept_pairs() == 16 + 0 + 36
    moved = lay.to("meta")
    assert moved.is_causal is False and moved.cu_seqlens.device.type == "meta"
    assert "is_causal=False" in repr(lay)


def test_bidirectional_layout_has_no_cut():
    """The flag needs b = 0 and t = len: a kernel that ignored it would see no cut."""
    with pytest.raises(
        ValueError,
        match=r"is_causal=False\) needs btok_start = 0 .* sequence 1 has btok_start=2, "
        r"target_start=3, length 4",
    ):
        CondensationLayout(
            torch.tensor([0, 3, 7], dtype=torch.int32),
            torch.tensor([0, 2], dtype=torch.int32),
            torch.tensor([3, 3], dtype=torch.int32),
            4,
            is_causal=False,
        )
    with pytest.raises(ValueError, match="is_causal must be a bool, got int"):
        CondensationLayout(
            torch.tensor([0, 3], dtype=torch.int32),
            torch.tensor([0], dtype=torch.int32),
            torch.tensor([3], dtype=torch.int32),
            3,
            is_causal=0,
        )


def test_num_kept_pairs_matches_brute_force():
    lay = CondensationLayout.from_lengths([5, 0, 9], [2, 3, 1], [4, 6, 0])
    assert lay.num_kept_pairs() == int(dense_layout_mask(lay).sum())


def test_to_keeps_host_copy():
    lay = CondensationLayout.from_lengths([3], 2, [1])
    same = lay.to("cpu")
    assert same is lay
    meta = lay.to("meta")
    assert meta.cu_seqlens.device.type == "meta" and meta.total_tokens == 6


def _layout(cu, bs, ts, max_seqlen=None, dtype=torch.int32):
    cu_t = torch.tensor(cu, dtype=dtype)
    lens = [b - a for a, b in zip(cu[:-1], cu[1:])]
    return CondensationLayout(
        cu_seqlens=cu_t,
        btok_start=torch.tensor(bs, dtype=torch.int32),
        target_start=torch.tensor(ts, dtype=torch.int32),
        max_seqlen=max(lens, default=0) if max_seqlen is None else max_seqlen,
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(cu=[0, 5, 3], bs=[1, 0], ts=[2, 0]),
            r"cu_seqlens must be non-decreasing; cu_seqlens\[1\]=5 > cu_seqlens\[2\]=3",
        ),
        (dict(cu=[1, 5], bs=[1], ts=[2]), r"cu_seqlens\[0\] must be 0, got 1"),
        (dict(cu=[0, 5], bs=[3], ts=[2]), r"btok_start\[0\]=3 must be <= target_start\[0\]=2"),
        (dict(cu=[0, 5, 9], bs=[1, 1], ts=[2, 5]), r"target_start\[1\]=5 is past the end of sequence 1 \(length 4\)"),
        (dict(cu=[0, 5], bs=[-1], ts=[2]), r"btok_start\[0\] must be >= 0, got -1"),
        (dict(cu=[0, 5], bs=[0], ts=[-2]), r"target_start\[0\] must be >= 0, got -2"),
        (
            dict(cu=[0, 5], bs=[1], ts=[2], dtype=torch.int64),
            r"cu_seqlens must have dtype torch.int32, got torch.int64",
        ),
        (dict(cu=[0], bs=[], ts=[]), r"cu_seqlens must hold at least 2 entries"),
        (dict(cu=[0, 5, 9], bs=[1], ts=[2, 3]), r"one entry per sequence \(2\), got 1 and 2"),
        (dict(cu=[0, 5], bs=[1], ts=[2], max_seqlen=4), r"max_seqlen=4 does not match the longest sequence \(5\)"),
    ],
    ids=[
        "decreasing",
        "nonzero_start",
        "btok_after_target",
        "target_past_end",
        "negative_btok",
        "negative_target",
        "wrong_dtype",
        "too_short",
        "count_mismatch",
        "max_seqlen",
    ],
)
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _layout(**kwargs)


def test_validation_shape_and_type():
    with pytest.raises(ValueError, match=r"cu_seqlens must be 1-D, got shape \(1, 2\)"):
        CondensationLayout(
            torch.zeros(1, 2, dtype=torch.int32),
            torch.zeros(1, dtype=torch.int32),
            torch.zeros(1, dtype=torch.int32),
            0,
        )
    with pytest.raises(ValueError, match=r"btok_start must be a torch\.Tensor, got list"):
        CondensationLayout(torch.zeros(2, dtype=torch.int32), [0], torch.zeros(1, dtype=torch.int32), 0)


@pytest.mark.parametrize(
    "args,match",
    [
        (([3, -1], 2, [1, 1]), r"query_lens\[1\] must be >= 0, got -1"),
        (([3, 1], [2], [1, 1]), r"num_btoks must have 2 entries \(one per query\), got 1"),
        (([3, 1], 2, [1, -4]), r"target_lens\[1\] must be >= 0, got -4"),
        (([3, 1], [2, -1], None), r"num_btoks\[1\] must be >= 0, got -1"),
        (([], 2, []), "query_lens must hold at least one sequence"),
        (([3.5], 2, [1]), r"query_lens must hold ints, got 3.5"),
        ((3, 2, [1]), "query_lens must be a sequence of ints, got a single int"),
        (([3], True, [1]), "num_btoks must be an int or a sequence of ints, got a bool"),
        ((torch.tensor([1.0]), 2, [1]), "query_lens must hold integers, got dtype torch.float32"),
    ],
    ids=[
        "negative_query",
        "btoks_count",
        "negative_target",
        "negative_btoks",
        "empty",
        "float_len",
        "scalar",
        "bool_btoks",
        "float_tensor",
    ],
)
def test_from_lengths_errors(args, match):
    with pytest.raises(ValueError, match=match):
        CondensationLayout.from_lengths(*args)
