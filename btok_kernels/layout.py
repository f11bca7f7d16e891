"""The packed-varlen layout of a condensation batch: a few integers per sequence.

Each sequence ``s`` of a packed batch occupies rows ``cu_seqlens[s] : cu_seqlens[s + 1]``
and is laid out as ``[query | K BToks | target]``. Relative to the sequence start,
``btok_start[s] = b`` is the first BTok row and ``target_start[s] = t`` the first target
row. The condensation mask is

    allowed(i, j) = (j <= i) and not (i >= t and j < b)

so a layout with ``b = 0`` or ``t = len`` is plain causal attention. A bidirectional
layout (``is_causal=False``, from :meth:`CondensationLayout.bidirectional`) has no mask inside
a sequence: ``allowed(i, j) = True`` for every ``i, j`` of the same sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["CondensationLayout"]


def _as_host_int_list(name: str, values) -> list[int]:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
        if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
            raise ValueError(f"{name} must hold integers, got dtype {values.dtype}")
        return [int(x) for x in values.tolist()]
    if isinstance(values, (int, bool)):
        raise ValueError(f"{name} must be a sequence of ints, got a single {type(values).__name__}")
    out = []
    for x in values:
        if isinstance(x, bool) or not isinstance(x, int):
            raise ValueError(f"{name} must hold ints, got {x!r} of type {type(x).__name__}")
        out.append(int(x))
    return out


@dataclass(frozen=True, eq=False)
class CondensationLayout:
    """Where each packed sequence starts, where its BToks start and where its target starts.

    Attributes:
        cu_seqlens: int32 ``[n + 1]``, cumulative sequence lengths, ``cu_seqlens[0] == 0``,
            non-decreasing (an empty sequence is allowed and produces no rows).
        btok_start: int32 ``[n]``, first BTok row of each sequence, relative to its start.
        target_start: int32 ``[n]``, first target row of each sequence, relative to its start
            (equal to the sequence length when the sequence has no target).
        max_seqlen: the longest sequence of the pack.
        is_causal: True (default): the condensation mask above. False: bidirectional, every
            row attends every key of its own sequence (never across sequences), as a vision
            tower or a bidirectional embedder does; ``btok_start`` must then be 0 and
            ``target_start`` the sequence length (so a kernel that ignored the flag would
            see plain causal attention, never a cut).

    One sequence with query length 3, K = 2 BToks and target length 2 (``b = 3, t = 5``),
    ``x`` = attended, ``.`` = masked::

                 keys: q q q B B t t
        query  row 0:  x . . . . . .
               row 1:  x x . . . . .
               row 2:  x x x . . . .
        BTok   row 3:  x x x x . . .
               row 4:  x x x x x . .
        target row 5:  . . . x x x .
               row 6:  . . . x x x x

    The same sequence in a bidirectional layout (``is_causal=False``, ``b = 0, t = 7``)::

                 keys: 0 1 2 3 4 5 6
               row 0:  x x x x x x x
               ...     (every row the same)
               row 6:  x x x x x x x

    Exact semantics for every backend: for packed rows ``r`` and keys ``c`` of sequence
    ``s`` (``start = cu_seqlens[s]``, ``i = r - start``, ``j = c - start``, both in
    ``[0, len_s)``), ``allowed = (j <= i) and not (i >= t and j < b)`` when ``is_causal``,
    ``allowed = True`` otherwise; pairs of different sequences are never allowed.
    :func:`btok_kernels.sequence_mask` and :func:`btok_kernels.condensation_mask` build it
    densely.

    Build it with :meth:`from_lengths`, :meth:`causal` or :meth:`bidirectional`; the
    constructor validates.
    The integers are kept on the host as well (``host_*``): ``from_lengths`` validates and
    builds on the host, then copies to the device without synchronising; constructing from
    device tensors reads them back once. Kernels read only the device tensors.
    """

    cu_seqlens: torch.Tensor
    btok_start: torch.Tensor
    target_start: torch.Tensor
    max_seqlen: int
    is_causal: bool = True

    def __post_init__(self):
        for name in ("cu_seqlens", "btok_start", "target_start"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype != torch.int32:
                raise ValueError(f"{name} must have dtype torch.int32, got {t.dtype}")
            if t.dim() != 1:
                raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
        cu, bs, ts = self.cu_seqlens, self.btok_start, self.target_start
        if cu.numel() < 2:
            raise ValueError(f"cu_seqlens must hold at least 2 entries (one sequence), got {cu.numel()}")
        n = cu.numel() - 1
        if bs.numel() != n or ts.numel() != n:
            raise ValueError(
                f"btok_start and target_start must have one entry per sequence ({n}), got {bs.numel()} and {ts.numel()}"
            )
        if not (cu.device == bs.device == ts.device):
            raise ValueError(
                f"cu_seqlens, btok_start and target_start must be on one device, got "
                f"{cu.device}, {bs.device}, {ts.device}"
            )
        host = torch.stack([cu[:-1], cu[1:], bs, ts]).cpu()
        lens = host[1] - host[0]
        if int(host[0, 0]) != 0:
            raise ValueError(f"cu_seqlens[0] must be 0, got {int(host[0, 0])}")
        bad = (lens < 0).nonzero()
        if bad.numel():
            s = int(bad[0])
            raise ValueError(
                f"cu_seqlens must be non-decreasing; "
                f"cu_seqlens[{s}]={int(host[0, s])} > cu_seqlens[{s + 1}]={int(host[1, s])}"
            )
        for name, row in (("btok_start", host[2]), ("target_start", host[3])):
            bad = (row < 0).nonzero()
            if bad.numel():
                s = int(bad[0])
                raise ValueError(f"{name}[{s}] must be >= 0, got {int(row[s])}")
        bad = (host[2] > host[3]).nonzero()
        if bad.numel():
            s = int(bad[0])
            raise ValueError(f"btok_start[{s}]={int(host[2, s])} must be <= target_start[{s}]={int(host[3, s])}")
        bad = (host[3] > lens).nonzero()
        if bad.numel():
            s = int(bad[0])
            raise ValueError(
                f"target_start[{s}]={int(host[3, s])} is past the end of sequence {s} (length {int(lens[s])})"
            )
        if isinstance(self.max_seqlen, bool) or not isinstance(self.max_seqlen, int):
            raise ValueError(f"max_seqlen must be an int, got {type(self.max_seqlen).__name__}")
        if self.max_seqlen != int(lens.max()):
            raise ValueError(f"max_seqlen={self.max_seqlen} does not match the longest sequence ({int(lens.max())})")
        if not isinstance(self.is_causal, bool):
            raise ValueError(f"is_causal must be a bool, got {type(self.is_causal).__name__}")
        if not self.is_causal:
            bad = ((host[2] != 0) | (host[3] != lens)).nonzero()
            if bad.numel():
                s = int(bad[0])
                raise ValueError(
                    f"a bidirectional layout (is_causal=False) needs btok_start = 0 and target_start = the "
                    f"sequence length; sequence {s} has btok_start={int(host[2, s])}, "
                    f"target_start={int(host[3, s])}, length {int(lens[s])}"
                )
        # plain Python ints: no tensor reads later (and nothing data-dependent under torch.compile)
        object.__setattr__(self, "_host", tuple(tuple(row) for row in host.tolist()))

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def from_lengths(
        cls,
        query_lens: Sequence[int] | torch.Tensor,
        num_btoks: int | Sequence[int] | torch.Tensor,
        target_lens: Sequence[int] | torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> CondensationLayout:
        """Layout of sequences ``[query | num_btoks BToks | target]`` packed in this order.

        Args:
            query_lens: ``n`` query lengths (>= 0).
            num_btoks: the number of BToks, one int for all sequences or ``n`` ints (>= 0).
            target_lens: ``n`` target lengths (>= 0; 0 means no target). ``None``: all 0.
            device: where the int32 tensors live (default: CPU).
        """
        q = _as_host_int_list("query_lens", query_lens)
        n = len(q)
        if n == 0:
            raise ValueError("query_lens must hold at least one sequence")
        if isinstance(num_btoks, bool):
            raise ValueError("num_btoks must be an int or a sequence of ints, got a bool")
        if isinstance(num_btoks, int):
            kb = [num_btoks] * n
        else:
            kb = _as_host_int_list("num_btoks", num_btoks)
        tl = [0] * n if target_lens is None else _as_host_int_list("target_lens", target_lens)
        for name, vals in (("num_btoks", kb), ("target_lens", tl)):
            if len(vals) != n:
                raise ValueError(f"{name} must have {n} entries (one per query), got {len(vals)}")
        for name, vals in (("query_lens", q), ("num_btoks", kb), ("target_lens", tl)):
            for s, x in enumerate(vals):
                if x < 0:
                    raise ValueError(f"{name}[{s}] must be >= 0, got {x}")
        lens = [a + b + c for a, b, c in zip(q, kb, tl)]
        cu = [0]
        for length in lens:
            cu.append(cu[-1] + length)
        if cu[-1] >= 2**31:
            raise ValueError(f"the pack holds {cu[-1]} tokens, more than int32 offsets allow")
        t = [a + b for a, b in zip(q, kb)]
        layout = cls(
            cu_seqlens=torch.tensor(cu, dtype=torch.int32),
            btok_start=torch.tensor(q, dtype=torch.int32),
            target_start=torch.tensor(t, dtype=torch.int32),
            max_seqlen=max(lens),
        )
        return layout if device is None else layout.to(device)

    @classmethod
    def causal(cls, cu_seqlens: Sequence[int] | torch.Tensor, device=None) -> CondensationLayout:
        """Plain causal varlen attention (``flash_attn_varlen_func(..., causal=True)``).

        Args:
            cu_seqlens: int ``[n + 1]`` cumulative sequence lengths (a list or a tensor).
            device: where the int32 tensors live. A tensor ``cu_seqlens`` keeps its device
                unless ``device`` is given (a GPU tensor is read back once, here, to
                validate it and keep the host copy).

        Every sequence gets ``b = 0`` and ``t = len``: no row is cut off from any key.
        """
        return cls._without_cut(cu_seqlens, device, is_causal=True)

    @classmethod
    def bidirectional(cls, cu_seqlens: Sequence[int] | torch.Tensor, device=None) -> CondensationLayout:
        """Bidirectional varlen attention (``flash_attn_varlen_func(..., causal=False)``):
        every row attends every key of its own sequence, as in a vision tower.

        Args:
            cu_seqlens: int ``[n + 1]`` cumulative sequence lengths (a list or a tensor).
            device: as in :meth:`causal`.

        The layout has ``is_causal=False``, ``b = 0`` and ``t = len`` for every sequence.
        """
        return cls._without_cut(cu_seqlens, device, is_causal=False)

    @classmethod
    def _without_cut(cls, cu_seqlens, device, is_causal: bool) -> CondensationLayout:
        if device is None and isinstance(cu_seqlens, torch.Tensor):
            device = cu_seqlens.device
        cu = _as_host_int_list("cu_seqlens", cu_seqlens)
        if len(cu) < 2:
            raise ValueError(f"cu_seqlens must hold at least 2 entries (one sequence), got {len(cu)}")
        lens = [b - a for a, b in zip(cu[:-1], cu[1:])]
        layout = cls(
            cu_seqlens=torch.tensor(cu, dtype=torch.int32),
            btok_start=torch.zeros(len(lens), dtype=torch.int32),
            target_start=torch.tensor(lens, dtype=torch.int32),
            max_seqlen=max(lens),
            is_causal=is_causal,
        )
        return layout if device is None else layout.to(device)

    # -- properties ------------------------------------------------------------------------
    @property
    def num_seqs(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def total_tokens(self) -> int:
        return self._host[1][-1]

    @property
    def device(self) -> torch.device:
        return self.cu_seqlens.device

    @property
    def seqlens(self) -> list[int]:
        return [end - start for start, end in zip(self._host[0], self._host[1])]

    @property
    def host_btok_start(self) -> list[int]:
        return list(self._host[2])

    @property
    def host_target_start(self) -> list[int]:
        return list(self._host[3])

    @property
    def host_cu_seqlens(self) -> list[int]:
        return [0, *self._host[1]]

    def to(self, device: torch.device | str) -> CondensationLayout:
        """The same layout with its tensors on ``device``. The host copy travels along, so
        nothing is validated or read back; host-to-GPU copies go through pinned memory
        without blocking the host."""
        device = torch.device(device)
        if device == self.device:
            return self
        new = object.__new__(CondensationLayout)
        for name in ("cu_seqlens", "btok_start", "target_start"):
            t = getattr(self, name)
            if t.device.type == "cpu" and device.type == "cuda":
                t = t.pin_memory().to(device, non_blocking=True)
            else:
                t = t.to(device)
            object.__setattr__(new, name, t)
        object.__setattr__(new, "max_seqlen", self.max_seqlen)
        object.__setattr__(new, "is_causal", self.is_causal)
        object.__setattr__(new, "_host", self._host)
        return new

    def num_kept_pairs(self) -> int:
        """How many (row, key) pairs the mask keeps: the work an exact kernel must do."""
        if not self.is_causal:
            return sum(length * length for length in self.seqlens)
        total = 0
        for length, b, t in zip(self.seqlens, self.host_btok_start, self.host_target_start):
            total += length * (length + 1) // 2 - (length - t) * b
        return total

    def __repr__(self) -> str:
        return (
            f"CondensationLayout(num_seqs={self.num_seqs}, total_tokens={self.total_tokens}, "
            f"max_seqlen={self.max_seqlen}, is_causal={self.is_causal}, device={self.device})"
        )
