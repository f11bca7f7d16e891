// The tile plan of csrc/tile_plan.h behind a C ABI, so that Python tests can load it with
// ctypes from a host build (tests/ops/test_cuda_plan.py). No CUDA, no torch.
#include <cstdint>

#include "../tile_plan.h"

extern "C" {

// out: seq, tile, num_tiles, bos, len
void btok_plan_find_tile(const int32_t* cu_seqlens, int n_seqs, int slot, int block, int32_t* out) {
  const btok::TileSlot s = btok::find_tile(cu_seqlens, n_seqs, slot, block);
  out[0] = s.seq;
  out[1] = s.tile;
  out[2] = s.num_tiles;
  out[3] = s.bos;
  out[4] = s.len;
}

// cases: n rows of (tile start, len, b, t); out: n rows of (lo, first_full, end_full, num).
// rows_as_tile: the tile is a query tile of block_m rows (key blocks of block_n), else a
// key tile of block_n keys (row blocks of block_m).
void btok_plan_blocks(const int32_t* cases, int n, int block_m, int block_n, int causal,
                      int rows_as_tile, int32_t* out) {
  for (int i = 0; i < n; ++i) {
    const int start = cases[4 * i], len = cases[4 * i + 1], b = cases[4 * i + 2], t = cases[4 * i + 3];
    btok::BlockRange r;
    if (rows_as_tile) {
      r = btok::key_blocks(start, btok::imin(start + block_m, len), len, b, t, block_n, causal != 0);
    } else {
      r = btok::row_blocks(start, btok::imin(start + block_n, len), len, b, t, block_m, block_n, causal != 0);
    }
    out[4 * i] = r.lo;
    out[4 * i + 1] = r.first_full;
    out[4 * i + 2] = r.end_full;
    out[4 * i + 3] = r.num;
  }
}

}  // extern "C"
