// The tile plan of the CUDA kernels: which blocks a tile visits, and which of them need a
// per-element mask. Written once, used by the forward, dK/dV and dQ kernels on the device
// and by the host unit tests (tests/ops/test_cuda_plan.py, csrc/tile_plan_test.cpp).
//
// It mirrors the Triton helpers `_find_tile`, `_key_plan` and `_row_plan` of
// btok_kernels/condensation/parallel.py. Positions are relative to the sequence start;
// for a sequence of length `len` with BTok start `b` and target start `t`, the mask is
//
//     causal:        allowed(i, j) = j <= i && !(i >= t && j < b)
//     bidirectional: allowed(i, j) = true           (i, j < len)
//
// Program slots. A pack of `n` sequences and `T` tokens launches `T / BLOCK + n` programs
// per head; sequence `s` owns the slots from `cu_seqlens[s] / BLOCK + s`, which leaves
// room for its `cdiv(len_s, BLOCK)` tiles. At most one slot per sequence has no tile.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define BTOK_HD __host__ __device__ __forceinline__
#else
#define BTOK_HD inline
#endif

namespace btok {

BTOK_HD int cdiv(int a, int b) { return (a + b - 1) / b; }
BTOK_HD int imin(int a, int b) { return a < b ? a : b; }
BTOK_HD int imax(int a, int b) { return a > b ? a : b; }

// The mask itself, for one (row, key) pair of a sequence; rows and keys past the end are
// never allowed.
BTOK_HD bool pair_allowed(int i, int j, int len, int b, int t, bool causal) {
  if (i >= len || j >= len) return false;
  if (!causal) return true;
  return j <= i && !(i >= t && j < b);
}

// Program slot -> the sequence and tile it computes.
struct TileSlot {
  int seq;       // sequence index
  int tile;      // tile index within the sequence; >= num_tiles: nothing to do
  int num_tiles; // cdiv(len, block)
  int bos;       // first token of the sequence in the pack
  int len;       // sequence length
};

BTOK_HD TileSlot find_tile(const int32_t* cu_seqlens, int n_seqs, int slot, int block) {
  int lo = 0, hi = n_seqs - 1;
  while (lo < hi) {  // the last sequence whose first slot is <= slot
    const int mid = (lo + hi + 1) / 2;
    if (cu_seqlens[mid] / block + mid <= slot) lo = mid;
    else hi = mid - 1;
  }
  const int bos = cu_seqlens[lo];
  const int len = cu_seqlens[lo + 1] - bos;
  return TileSlot{lo, slot - (bos / block + lo), cdiv(len, block), bos, len};
}

// The blocks a tile visits along the other axis: blocks [0, num) starting at `lo`, each
// `step` long; blocks [0, first_full) and [end_full, num) need the per-element mask, blocks
// [first_full, end_full) hold only allowed, in-bounds pairs.
struct BlockRange {
  int lo;
  int first_full;
  int end_full;
  int num;

  BTOK_HD bool masked(int i) const { return i < first_full || i >= end_full; }
};

// Key blocks of `block_n` keys seen by the query tile with rows [q0, q1).
//  causal: keys [lo, q1) with lo = b when every row is a target row (q0 >= t), else 0;
//    blocks holding keys < b are masked when the tile mixes target and other rows (the cut),
//    blocks that cross the diagonal (keys > q0) are masked.
//  bidirectional: every key block of the sequence; only a last partial block is masked.
BTOK_HD BlockRange key_blocks(int q0, int q1, int len, int b, int t, int block_n, bool causal) {
  if (!causal) return BlockRange{0, 0, len / block_n, cdiv(len, block_n)};
  const bool has_plain = q0 < t;  // rows that see the query segment
  const bool has_target = q1 > t; // rows that do not
  const int lo = has_plain ? 0 : b;
  const int num = cdiv(q1 - lo, block_n);
  const int n_diag = (q0 + 1 - lo) / block_n;
  const int n_cut = (has_plain && has_target) ? cdiv(b, block_n) : 0;
  return BlockRange{lo, imin(n_cut, n_diag), n_diag, num};
}

// Row blocks of `block_m` rows that see the key tile [n0, n1).
//  causal: rows from n0 (no earlier row sees these keys) up to t when every key is before
//    b (target rows do not see them), else up to len; the blocks that cross the diagonal
//    and, when the tile holds keys before b, the blocks from t on are masked.
//  bidirectional: every row block of the sequence; only a last partial block is masked.
BTOK_HD BlockRange row_blocks(int n0, int n1, int len, int b, int t, int block_m, int block_n,
                              bool causal) {
  if (!causal) return BlockRange{0, 0, len / block_m, cdiv(len, block_m)};
  const int row_hi = n1 <= b ? t : len;
  const int full_hi = n0 < b ? t : len;
  const int num = cdiv(row_hi - n0, block_m);
  const int n_diag = imin(cdiv(block_n - 1, block_m), num);
  const int n_full = imax((full_hi - n0) / block_m, n_diag);
  return BlockRange{n0, n_diag, n_full, num};
}

}  // namespace btok
