"""The benchmark workloads (benchmarks/README.md) and the work they contain (FLOPs, bytes).

Every figure the benchmarks print derives from the definitions here:

- :func:`design_workloads` -- ``image_2B``, ``video_2B``, ``image_7B``, ``long_8k`` (K = 16
  BToks, head dim 128, lengths drawn with a seeded generator).
- :func:`sweep_workloads` -- one sequence of ``L`` tokens, target ``L // 8``, K = 16.
- :func:`cpu_workloads` -- small shapes for a machine without a GPU.
- :func:`tiny_workloads` -- one pack small enough for the tests to run every peer on it.

The work an exact kernel must do is the number of (row, key) pairs the condensation mask
keeps (:meth:`CondensationLayout.num_kept_pairs`); forward FLOPs are ``4 * D * Hq`` per kept
pair (``QK^T`` and ``PV``, a multiply-add each) and backward counts 2.5x forward
(:func:`attention_flops`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from btok_kernels import CondensationLayout
from btok_kernels.mask import allowed_pairs

__all__ = [
    "Workload",
    "packed_workload",
    "design_workloads",
    "sweep_workloads",
    "cpu_workloads",
    "tiny_workloads",
    "workload_groups",
    "all_workloads",
    "tile_counts",
    "attention_flops",
    "attention_bytes",
    "BWD_FLOP_FACTOR",
]

BWD_FLOP_FACTOR = 2.5  # backward = 2.5x forward: dV, dP, dS->dQ, dS->dK plus the recomputed QK^T
NUM_BTOKS = 16
# hidden size Hq * D of the 2B model (Qwen2-VL-2B): the sweep keeps it at both head dims
SWEEP_HIDDEN, SWEEP_GQA = 1536, 6


@dataclass(frozen=True)
class Workload:
    """A packed batch of ``[query | K BToks | target]`` sequences and its attention heads."""

    name: str
    query_lens: tuple[int, ...]
    num_btoks: int
    target_lens: tuple[int, ...]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    group: str = "design"  # "design" | "sweep" | "cpu"

    def layout(self, device: torch.device | str | None = None) -> CondensationLayout:
        return CondensationLayout.from_lengths(self.query_lens, self.num_btoks, self.target_lens, device=device)

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def seqlens(self) -> list[int]:
        return [q + self.num_btoks + t for q, t in zip(self.query_lens, self.target_lens)]

    @property
    def total_tokens(self) -> int:
        return sum(self.seqlens)

    @property
    def max_seqlen(self) -> int:
        return max(self.seqlens)

    def kept_pairs(self) -> int:
        """(row, key) pairs the condensation mask keeps, over the pack (one head)."""
        return self.layout().num_kept_pairs()

    def causal_pairs(self) -> int:
        """(row, key) pairs of plain causal attention on the same pack (what a no-cut kernel computes)."""
        return sum(n * (n + 1) // 2 for n in self.seqlens)

    def flops(self, mode: str = "fwd") -> float:
        return attention_flops(self.kept_pairs(), self.num_heads, self.head_dim, mode)

    def bytes_moved(self, mode: str = "fwd", elem_bytes: int = 2) -> int:
        return attention_bytes(self.total_tokens, self.num_heads, self.num_kv_heads, self.head_dim, mode, elem_bytes)

    def describe(self) -> str:
        return (
            f"{self.name}: {self.num_seqs} seq, {self.total_tokens} tokens (max {self.max_seqlen}), "
            f"K={self.num_btoks}, Hq={self.num_heads}, Hkv={self.num_kv_heads}, D={self.head_dim}"
        )


def tile_counts(workload: Workload, block_m: int = 128, block_n: int = 128) -> tuple[int, int]:
    """(full, partial) ``block_m x block_n`` tiles of the pack that hold at least one kept pair.

    A tile is full when it is a whole ``block_m x block_n`` square and every pair in it is
    kept; any other visited tile (diagonal, cut, or ragged at a sequence end) needs a
    per-element mask. Skipped tiles are not counted."""
    full = partial = 0
    for length, b, t in zip(
        workload.seqlens, workload.query_lens, [q + workload.num_btoks for q in workload.query_lens]
    ):
        keys = torch.arange(length)
        for q0 in range(0, length, block_m):
            rows = torch.arange(q0, min(q0 + block_m, length))
            kept = allowed_pairs(rows[:, None], keys[None, :], b, t)  # [rows, L]
            per_tile = torch.stack([kept[:, k0 : k0 + block_n].sum() for k0 in range(0, length, block_n)])
            full += int((per_tile == block_m * block_n).sum())
            partial += int(((per_tile > 0) & (per_tile < block_m * block_n)).sum())
    return full, partial


def attention_flops(pairs: int, num_heads: int, head_dim: int, mode: str = "fwd") -> float:
    """FLOPs of attention over ``pairs`` kept (row, key) pairs per head.

    Forward: ``QK^T`` and ``PV`` are ``2 * D`` FLOPs per pair each, so ``4 * D``.
    Backward: 2.5x forward (``"bwd"``); forward+backward: 3.5x (``"fwd_bwd"``).
    """
    fwd = 4.0 * head_dim * num_heads * pairs
    factor = {"fwd": 1.0, "bwd": BWD_FLOP_FACTOR, "fwd_bwd": 1.0 + BWD_FLOP_FACTOR}
    if mode not in factor:
        raise ValueError(f"mode must be one of {tuple(factor)}, got {mode!r}")
    return fwd * factor[mode]


def attention_bytes(
    total_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, mode: str = "fwd", elem_bytes: int = 2
) -> int:
    """The compulsory HBM traffic of a fused attention kernel: each tensor read or written once.

    Forward: read q, k, v; write o and the fp32 log-sum-exp.
    Backward: read q, k, v, o, dO and the lse; write dq, dk, dv (the per-row
    ``delta = rowsum(dO * o)`` is an fp32 write + read on top).
    """
    q_bytes = total_tokens * num_heads * head_dim * elem_bytes
    kv_bytes = total_tokens * num_kv_heads * head_dim * elem_bytes
    row_stat = total_tokens * num_heads * 4
    fwd = (q_bytes + 2 * kv_bytes) + q_bytes + row_stat
    bwd = (3 * q_bytes + 2 * kv_bytes + row_stat) + (q_bytes + 2 * kv_bytes) + 2 * row_stat
    table = {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}
    if mode not in table:
        raise ValueError(f"mode must be one of {tuple(table)}, got {mode!r}")
    return table[mode]


def packed_workload(
    name: str,
    num_seqs: int,
    query_range: tuple[int, int],
    target_range: tuple[int, int],
    seed: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int = 128,
    num_btoks: int = NUM_BTOKS,
    group: str = "design",
) -> Workload:
    """Query then target lengths drawn uniformly (inclusive ranges) from one seeded generator,
    as benchmarks/README.md specifies: ``torch.randint(lo, hi + 1, (n,), generator=g)``."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(query_range[0], query_range[1] + 1, (num_seqs,), generator=g)
    t = torch.randint(target_range[0], target_range[1] + 1, (num_seqs,), generator=g)
    return Workload(name, tuple(q.tolist()), num_btoks, tuple(t.tolist()), num_heads, num_kv_heads, head_dim, group)


def single_sequence(
    name: str,
    length: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    num_btoks: int = NUM_BTOKS,
    target_len: int | None = None,
    group: str = "sweep",
) -> Workload:
    """One sequence of ``length`` tokens: target ``length // 8`` (unless given), K BToks, the rest query."""
    target = length // 8 if target_len is None else target_len
    query = length - num_btoks - target
    if query < 0:
        raise ValueError(f"length {length} is shorter than K + target = {num_btoks + target}")
    return Workload(name, (query,), num_btoks, (target,), num_heads, num_kv_heads, head_dim, group)


def design_workloads() -> list[Workload]:
    """The four packed workloads the peers were measured on (benchmarks/README.md)."""
    return [
        packed_workload("image_2B", 16, (256, 1280), (32, 256), seed=0, num_heads=12, num_kv_heads=2),
        packed_workload("video_2B", 4, (3072, 4096), (128, 512), seed=1, num_heads=12, num_kv_heads=2),
        packed_workload("image_7B", 16, (256, 1280), (32, 256), seed=0, num_heads=28, num_kv_heads=4),
        Workload("long_8k", (7152,), NUM_BTOKS, (1024,), 12, 2, 128),
    ]


def sweep_workloads(lengths: Sequence[int], head_dims: Sequence[int]) -> list[Workload]:
    """One sequence per length, target 1/8 of it, at each head dim. The hidden size
    ``Hq * D`` stays 1536 (12 heads at D=128, 24 at D=64) with GQA ratio 6."""
    out = []
    for d in head_dims:
        hq = SWEEP_HIDDEN // d
        for length in lengths:
            out.append(single_sequence(f"seq{length}_d{d}", length, hq, max(1, hq // SWEEP_GQA), d))
    return out


def cpu_workloads() -> list[Workload]:
    """A small packed batch shaped like image_2B (1/8 of the lengths, K=4) for the CPU run."""
    return [
        packed_workload(
            "cpu_pack",
            4,
            (32, 160),
            (4, 32),
            seed=0,
            num_heads=4,
            num_kv_heads=2,
            head_dim=64,
            num_btoks=4,
            group="cpu",
        )
    ]


def tiny_workloads() -> list[Workload]:
    """Three short sequences, GQA 2: enough for every peer's code path, in milliseconds."""
    return [
        packed_workload(
            "tiny", 3, (8, 40), (2, 12), seed=0, num_heads=4, num_kv_heads=2, head_dim=16, num_btoks=2, group="tiny"
        )
    ]


def workload_groups(lengths: Sequence[int] = (), head_dims: Sequence[int] = ()) -> dict[str, list[Workload]]:
    """The workloads by group name: design, sweep (at the given lengths and head dims), cpu, tiny."""
    return {
        "design": design_workloads(),
        "sweep": sweep_workloads(lengths, head_dims),
        "cpu": cpu_workloads(),
        "tiny": tiny_workloads(),
    }


def all_workloads(lengths: Sequence[int] = (), head_dims: Sequence[int] = ()) -> dict[str, Workload]:
    """Every named workload (design, cpu, tiny and the given sweep), by name."""
    return {w.name: w for group in workload_groups(lengths, head_dims).values() for w in group}
