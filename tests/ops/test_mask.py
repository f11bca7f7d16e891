"""The exported dense mask helpers against the mask's definition (the test oracle's), pair by pair."""

from __future__ import annotations

import pytest
import torch

from btok_kernels import CondensationLayout, condensation_mask, sequence_mask
from btok_kernels.mask import condensation_mask_mod
from tests.helpers.oracle import dense_layout_mask, dense_mask


@pytest.mark.parametrize("length,b,t", [(0, 0, 0), (1, 0, 1), (1, 1, 1), (7, 3, 5), (9, 0, 9), (9, 4, 4), (12, 12, 12)])
def test_sequence_mask_matches_the_definition(length, b, t):
    got = sequence_mask(length, b, t)
    assert got.dtype == torch.bool and got.shape == (length, length)
    assert torch.equal(got, dense_mask(length, b, t))


def test_sequence_mask_bidirectional_sees_every_key():
    assert sequence_mask(6, 0, 6, causal=False).all()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_condensation_mask_is_block_diagonal(causal):
    if causal:
        layout = CondensationLayout.from_lengths([3, 0, 2], [2, 1, 1], [1, 2, 0])
    else:
        layout = CondensationLayout.bidirectional([0, 6, 7, 7, 10])
    got = condensation_mask(layout)
    assert got.device == layout.device and torch.equal(got, dense_layout_mask(layout))
    assert int(got.sum()) == layout.num_kept_pairs()


@pytest.mark.parametrize(
    "args,match",
    [
        ((5, 3, 2), r"0 <= btok_start <= target_start <= length, got btok_start=3, target_start=2"),
        ((5, 1, 6), "target_start=6, length=5"),
        ((5.0, 1, 2), "length must be an int, got float"),
    ],
    ids=["b_after_t", "t_past_end", "float_length"],
)
def test_sequence_mask_errors(args, match):
    with pytest.raises(ValueError, match=match):
        sequence_mask(*args)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_flex_mask_mod_is_the_condensation_mask(causal):
    """flex_attention's mask function on the dense grid equals the dense mask, for both kinds
    of layout (a bidirectional layout once got a causal mask_mod)."""
    if causal:
        layout = CondensationLayout.from_lengths([3, 0, 5, 2], [2, 1, 2, 1], [2, 3, 0, 4])
    else:
        layout = CondensationLayout.bidirectional([0, 6, 7, 7, 10])
    index = torch.arange(layout.total_tokens)
    grid = condensation_mask_mod(layout)(0, 0, index[:, None], index[None, :])
    assert torch.equal(grid, condensation_mask(layout))
    assert int(grid.sum()) == layout.num_kept_pairs()
