// Forward kernel of condensation attention (FlashAttention-2 style, mma.sync tensor cores).
//
// One program per (query tile of BM rows, query head); each of its BM / 16 warps owns 16
// rows. The key blocks it visits, and which of them need the per-element mask, come from
// the tile plan (tile_plan.h): nothing is precomputed per batch. K and V blocks are double
// buffered in shared memory (cp.async), the scores and the output stay in registers in
// fp32, and the softmax runs online in log2 units.
//
// dispatch_fwd() picks the instance for the dtype and head dim and hands it, with its grid,
// block and shared memory, to a runner: the CUDA launch (fwd.cu) or the host emulator.
#pragma once

#include <cmath>

#include "../launch.h"
#include "common.cuh"
#include "config.h"

namespace btok {

template <typename E, int DP, int BM, int BN>
BTOK_KERNEL(BM / 16 * 32) fwd_kernel(const FwdParams p) {
  constexpr int kWarps = BM / 16, kThreads = kWarps * 32;
  constexpr int NT = BN / 8;   // 8-key column tiles of the scores
  constexpr int NTD = DP / 8;  // 8-column tiles of the output
  constexpr int kTile = SmemRow<DP>::kStride;
  const AttnParams& a = p.a;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;

  const TileSlot slot = find_tile(a.cu_seqlens, a.n_seqs, blockIdx.x, BM);
  if (slot.tile >= slot.num_tiles) return;
  const int i_m = slot.num_tiles - 1 - slot.tile;  // the last tiles see the most keys: run them first
  const int h = blockIdx.y, kvh = h / (a.hq / a.hkv);
  const int len = slot.len;
  const int b = a.causal ? a.btok_start[slot.seq] : 0;
  const int t = a.causal ? a.target_start[slot.seq] : len;
  const int q0 = i_m * BM;
  const BlockRange kb = key_blocks(q0, imin(q0 + BM, len), len, b, t, BN, a.causal);

  const uint16_t* q_base = static_cast<const uint16_t*>(a.q.ptr) + slot.bos * a.q.row + h * a.q.head;
  const uint16_t* k_base = static_cast<const uint16_t*>(a.k.ptr) + slot.bos * a.k.row + kvh * a.k.head;
  const uint16_t* v_base = static_cast<const uint16_t*>(a.v.ptr) + slot.bos * a.v.row + kvh * a.v.head;

  uint16_t* s_q = dynamic_smem();             // [BM][kTile]
  uint16_t* s_k = s_q + BM * kTile;           // [2][BN][kTile]
  uint16_t* s_v = s_k + 2 * BN * kTile;       // [2][BN][kTile]
  auto load_kv = [&](int ib) {
    const int start_n = kb.lo + ib * BN, buf = ib & 1;
    load_rows<BN, DP, kThreads>(s_k + buf * BN * kTile, k_base, a.k.row, start_n, len, a.d);
    load_rows<BN, DP, kThreads>(s_v + buf * BN * kTile, v_base, a.v.row, start_n, len, a.d);
  };
  load_rows<BM, DP, kThreads>(s_q, q_base, a.q.row, q0, len, a.d);
  if (kb.num > 0) load_kv(0);
  cp_async_commit();

  float acc[NTD][4];
  zero(acc);
  float m_i[2] = {-INFINITY, -INFINITY};  // running max per row (g, g + 8), log2 units
  float l_i[2] = {0.f, 0.f};              // this thread's share of the running sum
  const float scale_log2 = a.scale * kLog2e;
  const int row_w = warp * 16;  // the warp's first row within the tile

  for (int ib = 0; ib < kb.num; ++ib) {
    if (ib + 1 < kb.num) {
      load_kv(ib + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint16_t* k_tile = s_k + (ib & 1) * BN * kTile;
    const uint16_t* v_tile = s_v + (ib & 1) * BN * kTile;

    float s[NT][4];  // [16 rows, BN keys] of this warp
    zero(s);
    mma_a_bt<E, DP, NT>(s, s_q, row_w, k_tile, a.d, lane);
    const int start_n = kb.lo + ib * BN;
    const bool masked = kb.masked(ib);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] *= scale_log2;
        if (masked) {
          const int row = q0 + row_w + g + (e >> 1) * 8, key = start_n + nt * 8 + 2 * q + (e & 1);
          if (!pair_allowed(row, key, len, b, t, a.causal)) s[nt][e] = -INFINITY;
        }
      }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      const float m_new = fmaxf(m_i[r], quad_max(mx));
      // a row with no key yet keeps m = -inf; shift by 0 inside the exponent so that
      // exp2(-inf - shift) is 0, not NaN
      const float shift = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = fast_exp2(m_i[r] - shift);
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        s[nt][2 * r] = fast_exp2(s[nt][2 * r] - shift);
        s[nt][2 * r + 1] = fast_exp2(s[nt][2 * r + 1] - shift);
        sum += s[nt][2 * r] + s[nt][2 * r + 1];
      }
      l_i[r] = l_i[r] * alpha + sum;
#pragma unroll
      for (int nt = 0; nt < NTD; ++nt) {
        acc[nt][2 * r] *= alpha;
        acc[nt][2 * r + 1] *= alpha;
      }
      m_i[r] = m_new;
    }
    mma_acc_b<E, DP, BN / 16, NTD, NT>(acc, s, v_tile, 0, a.d, lane);
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }

  float inv[2], lse[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(l_i[r]);
    // every row of the sequence sees itself, so l > 0; rows past its end are not stored
    inv[r] = l > 0.f ? 1.f / l : 0.f;
    lse[r] = l > 0.f ? (m_i[r] + log2f(l)) * kLn2 : -INFINITY;
  }
  uint16_t* o_base = static_cast<uint16_t*>(p.out.ptr) + slot.bos * p.out.row + h * p.out.head;
  store_acc<E, NTD>(o_base, p.out.row, acc, q0 + row_w, 0, len, a.d, inv[0], inv[1], lane);
  if (q == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = q0 + row_w + g + 8 * r;
      if (row < len) store_f32(p.lse + h * p.lse_head + slot.bos + row, lse[r]);
    }
  }
}

template <typename E, int DP, typename Runner>
typename Runner::Status dispatch_fwd_tier(const FwdParams& p, Runner& run) {
  constexpr int BM = FwdConfig<DP>::BM, BN = FwdConfig<DP>::BN;
  constexpr int kSmem = (BM + 4 * BN) * SmemRow<DP>::kStride * 2;
  const Grid grid{static_cast<unsigned>(p.a.total / BM + p.a.n_seqs), static_cast<unsigned>(p.a.hq)};
  return run.launch(fwd_kernel<E, DP, BM, BN>, grid, BM / 16 * 32, kSmem, p);
}

template <typename E, typename Runner>
typename Runner::Status dispatch_fwd_dtype(const FwdParams& p, Runner& run) {
  switch (padded_head_dim(p.a.d)) {
    case 64: return dispatch_fwd_tier<E, 64>(p, run);
    case 128: return dispatch_fwd_tier<E, 128>(p, run);
    case 256: return dispatch_fwd_tier<E, 256>(p, run);
    default: return run.invalid();
  }
}

// Runs the forward through `run`: nothing for an empty pack.
template <typename Runner>
typename Runner::Status dispatch_fwd(const FwdParams& p, DType dtype, Runner& run) {
  if (p.a.total == 0) return run.ok();
  return dtype == DType::kBF16 ? dispatch_fwd_dtype<BF16>(p, run) : dispatch_fwd_dtype<F16>(p, run);
}

}  // namespace btok
