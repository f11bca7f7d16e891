"""Packed layouts for the kernel tests: random ones, the edge cases, and random inputs for them.

A layout is given as ``(query_lens, num_btoks, target_lens)``, the arguments of
:meth:`btok_kernels.CondensationLayout.from_lengths` (``num_btoks`` an int or one per sequence).
"""

from __future__ import annotations

import math

import torch

# The cases every condensation kernel must get right, whatever its tile sizes; a test file
# takes the ones it runs (:func:`edge_layouts`) and adds those sized for its own tiles.
EDGE_LAYOUTS = {
    "query_len_1": ([1, 1], [4, 2], [9, 1]),
    "no_target": ([23, 40], 4, [0, 0]),
    "K1": ([30, 5], 1, [12, 20]),
    "no_btoks": ([12], 0, [21]),  # b == t: target rows see only the target
    "no_query": ([0, 0], [3, 16], [20, 1]),  # b == 0: plain causal
    "shorter_than_tile": ([3, 2, 5], [2, 1, 3], [4, 0, 2]),
    "many_tiny": ([1, 0, 2, 1, 3, 0, 1, 2, 1, 1, 2, 0], 1, [1, 2, 0, 1, 1, 3, 0, 2, 1, 0, 1, 1]),
    "empty_sequences": ([0, 21, 0, 0, 5], [0, 2, 0, 0, 3], [0, 17, 0, 0, 0]),  # zero-length slots in the pack
}


def edge_layouts(*names: str) -> dict[str, tuple]:
    """The named cases of :data:`EDGE_LAYOUTS`, in the order given."""
    return {name: EDGE_LAYOUTS[name] for name in names}


def random_layout(
    seed: int, max_seqs: int = 5, max_query: int = 70, max_btoks: int = 8, max_target: int = 45
) -> tuple[list[int], list[int], list[int]]:
    """1..``max_seqs`` sequences with 0..``max_query - 1`` query tokens, 1..``max_btoks`` BToks
    and 0..``max_target - 1`` target tokens each, drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, max_seqs + 1, (1,), generator=g))
    query = torch.randint(0, max_query, (n,), generator=g).tolist()
    btoks = torch.randint(1, max_btoks + 1, (n,), generator=g).tolist()
    target = torch.randint(0, max_target, (n,), generator=g).tolist()
    return query, btoks, target


def random_sequences(n: int, seed: int, max_length: int) -> list[tuple[int, int, int]]:
    """``n`` single sequences ``(length, b, t)``: length 1..``max_length - 1``, then
    ``0 <= b <= t <= length`` drawn uniformly, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for _ in range(n):
        length = int(torch.randint(1, max_length, (1,), generator=g))
        b, t = sorted(torch.randint(0, length + 1, (2,), generator=g).tolist())
        cases.append((length, b, t))
    return cases


def make_inputs(
    layout,
    hq: int,
    hkv: int,
    d: int,
    dtype: torch.dtype,
    device=None,
    seed: int = 0,
    q_scale: float = 1.0,
    logits: float | str | None = None,
    rounded: bool = True,
):
    """Random ``q [T, hq, d]``, ``k, v [T, hkv, d]``, ``dout [T, hq, d]`` (``T`` the layout's
    tokens) in ``dtype`` on ``device`` (default: the layout's), and the same numbers in fp64.

    Args:
        q_scale: Gaussian q times this.
        logits: None for Gaussian inputs; a number L: every q and k lie near one direction,
            scaled so that every scaled logit (softmax scale ``1 / sqrt(d)``) is near L;
            ``"mixed"``: rows and keys of random sign and size along it, logits over about +-45.
        rounded: the fp64 copy holds the numbers rounded to ``dtype`` (the oracle sees what
            the kernels see); False: the fp64 draws before rounding.

    Returns:
        ``([q, k, v, dout] in fp64, [q, k, v, dout] in dtype)``.
    """
    device = layout.device if device is None else device
    g = torch.Generator().manual_seed(seed)
    total = layout.total_tokens
    q = torch.randn(total, hq, d, generator=g, dtype=torch.float64) * q_scale
    k = torch.randn(total, hkv, d, generator=g, dtype=torch.float64)
    v = torch.randn(total, hkv, d, generator=g, dtype=torch.float64)
    do = torch.randn(total, hq, d, generator=g, dtype=torch.float64)
    if logits is not None:
        u = torch.randn(d, generator=g, dtype=torch.float64)
        u /= u.norm()
        if logits == "mixed":
            size = math.sqrt(45 * math.sqrt(d))
            q_amp = torch.rand(total, hq, 1, generator=g, dtype=torch.float64) * 2 - 1
            k_amp = torch.randint(0, 2, (total, hkv, 1), generator=g).double() * 2 - 1
        else:
            size = math.sqrt(abs(logits) * math.sqrt(d))  # q . k / sqrt(d) = logits
            q_amp = torch.full((total, hq, 1), math.copysign(1.0, logits), dtype=torch.float64)
            k_amp = torch.ones(total, hkv, 1, dtype=torch.float64)
        q = 0.5 * q + q_amp * size * u
        k = 0.5 * k + k_amp * size * u
    lowp = [x.to(device=device, dtype=dtype) for x in (q, k, v, do)]
    exact = [x.double() for x in lowp] if rounded else [x.to(device) for x in (q, k, v, do)]
    return exact, lowp
