"""The kernels' tile plans checked pair by pair against the mask: the one walk that the Triton
plan (tests/ops/test_tile_plan.py) and the CUDA plan (tests/ops/test_cuda_plan.py) go through.

A program owns one tile of one sequence (``tile`` rows in the forward and dQ, ``tile`` keys in
dK/dV) and visits blocks of ``step`` positions on the other axis. Its plan, in the form both
kernels' plans convert to, is ``(tile start, lo, first_full, end_full, num)``: blocks start at
``lo + i * step`` for ``i < num``, those with ``first_full <= i < end_full`` unmasked. The plan is
right when

- a visited block holds at least one allowed pair (masked tiles are skipped),
- an unmasked block holds only allowed, in-bounds pairs (only partial tiles pay a mask),
- the visited blocks cover every allowed pair exactly once;

and the launch is right when every (sequence, tile) gets exactly one program and at most one
program per sequence gets none (:func:`check_tile_programs`).
"""

from __future__ import annotations

import numpy as np

from tests.helpers.oracle import allowed

# (seqlen, b, t): one-token sequences, no query / no target, tile-aligned and off-by-one lengths
LAYOUT_CASES = [
    (1, 0, 1), (1, 0, 0), (1, 1, 1), (7, 3, 5), (16, 8, 16), (17, 4, 10), (40, 0, 40),
    (40, 40, 40), (50, 13, 29), (64, 32, 48), (65, 33, 49), (97, 70, 74), (97, 5, 6),
    (100, 0, 0), (100, 99, 99), (33, 16, 16), (48, 31, 33), (150, 64, 130), (129, 128, 129),
]  # fmt: skip

# the lengths of the sequences of a packed batch, for the tile-to-program map
PROGRAM_LENGTHS = {
    "one_token": [1],
    "one_long": [1000],
    "aligned": [16, 16, 16],
    "empties": [0, 5, 0, 0, 17],
    "many_tiny": [1] * 50,
    "mixed": [3, 200, 1, 64, 65, 15, 0, 31],
}


def check_tile_plans(seqlen: int, b: int, t: int, causal: bool, plans, tile: int, step: int, rows_as_tile: bool):
    """Checks the plans of every tile of one sequence ``[query | BToks | target]`` (BToks at ``b``,
    target at ``t``); ``plans``: ``(tile start, lo, first_full, end_full, num)`` per tile;
    ``rows_as_tile``: the tile is rows (forward, dQ), else keys (dK/dV)."""
    pad = seqlen + 2 * max(tile, step)
    idx = np.arange(pad)
    ok_all = allowed(
        idx[:, None], idx[None, :], b, t, causal, seqlen
    )  # [pad, pad], views per block below (NumPy: no intra-op threads)
    cover = np.zeros((pad, pad), dtype=np.int32)
    for start, lo, first_full, end_full, num in plans:
        assert 0 <= first_full <= end_full <= num, f"plan of tile {start}: {(lo, first_full, end_full, num)}"
        for i_blk in range(num):
            o0 = lo + i_blk * step
            own_span, other_span = (start, start + tile), (o0, o0 + step)
            (r0, r1), (c0, c1) = (own_span, other_span) if rows_as_tile else (other_span, own_span)
            where = f"rows [{r0}, {r1}) keys [{c0}, {c1}) (len {seqlen}, b {b}, t {t})"
            assert o0 >= 0, f"block starts before the sequence: {where}"
            ok = ok_all[r0:r1, c0:c1]
            assert ok.any(), f"visited block with no allowed pair: {where}"
            # the own tile's padding is never stored; the other axis is read without a mask
            # in an unmasked block, so it must stay inside the sequence
            own = ok[: max(0, seqlen - r0)] if rows_as_tile else ok[:, : max(0, seqlen - c0)]
            other_inside = (c1 if rows_as_tile else r1) <= seqlen
            if first_full <= i_blk < end_full:
                assert other_inside, f"unmasked block reads past the sequence end: {where}"
                assert own.all(), f"unmasked block holds a masked pair: {where}"
            else:
                assert not (own.all() and other_inside), f"masked block that needs no mask: {where}"
            cover[r0:r1, c0:c1] += ok
    assert np.array_equal(cover, ok_all), f"pairs not covered exactly once (len {seqlen}, b {b}, t {t})"


def launch_grid(lens: list[int], block: int) -> int:
    """The number of programs the launchers launch for sequences of ``lens`` and tiles of ``block``."""
    return sum(lens) // block + len(lens)


def check_tile_programs(lens: list[int], block: int, programs):
    """``programs``: ``(sequence, tile, tiles of the sequence)`` of each of the
    :func:`launch_grid` programs, in program order (a tile past the sequence's last: no tile)."""
    assert len(programs) == launch_grid(lens, block)
    seen, empty_per_seq = set(), [0] * len(lens)
    for s, m, n_m in programs:
        assert n_m == -(-lens[s] // block), (s, m, n_m)
        if m >= n_m:
            empty_per_seq[s] += 1
            continue
        assert m >= 0 and (s, m) not in seen, (s, m)
        seen.add((s, m))
    assert seen == {(s, m) for s in range(len(lens)) for m in range(-(-lens[s] // block))}
    assert max(empty_per_seq) <= 1
