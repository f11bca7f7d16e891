// Backward kernels of condensation attention (FlashAttention-2 style, mma.sync tensor cores):
//   1. delta = rowsum(dO * O), fp32 [hq, T];
//   2. dK, dV: one program per (key tile, KV head), looping over the query heads that share
//      the KV head and over the row blocks that see the tile (tile_plan.h: row_blocks);
//      each dK/dV element is written once, by one program: deterministic, no atomics;
//   3. dQ: one program per (query tile, query head), visiting the forward's key blocks.
// The probabilities are recomputed from the forward's LSE, in log2 units.
//
// dispatch_bwd() hands the three launches to a runner: the CUDA launch (bwd.cu) or the
// host emulator.
#pragma once

#include <cmath>

#include "../launch.h"
#include "common.cuh"
#include "config.h"

namespace btok {

// One warp per (token, head): delta[h, token] = sum_d dout * out.
template <typename E>
BTOK_KERNEL(256) bwd_delta_kernel(const BwdParams p) {
  const AttnParams& a = p.a;
  const int lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (item >= static_cast<int64_t>(a.total) * a.hq) return;
  const int tok = static_cast<int>(item / a.hq), h = static_cast<int>(item % a.hq);
  float sum = 0.f;
  const int col = lane * 8;  // 8 elements (16 bytes) per lane: up to 256 columns
  if (col < a.d) {
    const uint4 o = load_u128(static_cast<const uint16_t*>(p.out.ptr) + tok * p.out.row + h * p.out.head + col);
    const uint4 d = load_u128(static_cast<const uint16_t*>(p.dout.ptr) + tok * p.dout.row + h * p.dout.head + col);
    const uint32_t ow[4] = {o.x, o.y, o.z, o.w}, dw[4] = {d.x, d.y, d.z, d.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      sum += E::to_float(static_cast<uint16_t>(ow[i] & 0xffffu)) * E::to_float(static_cast<uint16_t>(dw[i] & 0xffffu));
      sum += E::to_float(static_cast<uint16_t>(ow[i] >> 16)) * E::to_float(static_cast<uint16_t>(dw[i] >> 16));
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += shfl_xor(sum, off);
  if (lane == 0) store_f32(p.delta + static_cast<int64_t>(h) * a.total + tok, sum);
}

// dK and dV of BN keys of one KV head. Warp w owns keys [16 (w / DSPLIT), +16) and
// accumulates the dK, dV columns [(w % DSPLIT) DP / DSPLIT, +DP / DSPLIT).
template <typename E, int DP, int BN, int BM, int DSPLIT>
BTOK_KERNEL(BN / 16 * DSPLIT * 32) bwd_dkdv_kernel(const BwdParams p) {
  constexpr int kThreads = BN / 16 * DSPLIT * 32;
  constexpr int NT = BM / 8;               // 8-row column tiles of S^T and dP^T
  constexpr int DW = DP / DSPLIT;          // dK, dV columns per warp
  constexpr int NTD = DW / 8;
  constexpr int kTile = SmemRow<DP>::kStride;
  const AttnParams& a = p.a;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int key_w = (warp / DSPLIT) * 16, col_w = (warp % DSPLIT) * DW;

  const TileSlot slot = find_tile(a.cu_seqlens, a.n_seqs, blockIdx.x, BN);
  if (slot.tile >= slot.num_tiles) return;
  const int kvh = blockIdx.y, group = a.hq / a.hkv;
  const int len = slot.len;
  const int b = a.causal ? a.btok_start[slot.seq] : 0;
  const int t = a.causal ? a.target_start[slot.seq] : len;
  const int n0 = slot.tile * BN;
  const BlockRange rb = row_blocks(n0, imin(n0 + BN, len), len, b, t, BM, BN, a.causal);

  uint16_t* s_k = dynamic_smem();                     // [BN][kTile]
  uint16_t* s_v = s_k + BN * kTile;                   // [BN][kTile]
  uint16_t* s_q = s_v + BN * kTile;                   // [2][BM][kTile]
  uint16_t* s_do = s_q + 2 * BM * kTile;              // [2][BM][kTile]
  float* s_lse = reinterpret_cast<float*>(s_do + 2 * BM * kTile);  // [2][BM]
  float* s_delta = s_lse + 2 * BM;                    // [2][BM]

  const uint16_t* k_base = static_cast<const uint16_t*>(a.k.ptr) + slot.bos * a.k.row + kvh * a.k.head;
  const uint16_t* v_base = static_cast<const uint16_t*>(a.v.ptr) + slot.bos * a.v.row + kvh * a.v.head;
  load_rows<BN, DP, kThreads>(s_k, k_base, a.k.row, n0, len, a.d);
  load_rows<BN, DP, kThreads>(s_v, v_base, a.v.row, n0, len, a.d);

  // iteration `it` visits row block it % rb.num of query head kvh * group + it / rb.num
  const int n_iters = group * rb.num;
  auto load_rows_of = [&](int it) {
    const int h = kvh * group + it / rb.num, m0 = rb.lo + (it % rb.num) * BM, buf = it & 1;
    const uint16_t* q_base = static_cast<const uint16_t*>(a.q.ptr) + slot.bos * a.q.row + h * a.q.head;
    const uint16_t* do_base = static_cast<const uint16_t*>(p.dout.ptr) + slot.bos * p.dout.row + h * p.dout.head;
    load_rows<BM, DP, kThreads>(s_q + buf * BM * kTile, q_base, a.q.row, m0, len, a.d);
    load_rows<BM, DP, kThreads>(s_do + buf * BM * kTile, do_base, p.dout.row, m0, len, a.d);
    load_row_values<BM, kThreads>(s_lse + buf * BM, p.lse + h * p.lse_head + slot.bos, m0, len);
    load_row_values<BM, kThreads>(s_delta + buf * BM, p.delta + static_cast<int64_t>(h) * a.total + slot.bos, m0, len);
  };
  if (n_iters > 0) load_rows_of(0);
  cp_async_commit();

  float dk[NTD][4], dv[NTD][4];
  zero(dk);
  zero(dv);
  const float scale_log2 = a.scale * kLog2e;

  for (int it = 0; it < n_iters; ++it) {
    if (it + 1 < n_iters) {
      load_rows_of(it + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int buf = it & 1, ib = it % rb.num, m0 = rb.lo + ib * BM;
    const uint16_t* q_tile = s_q + buf * BM * kTile;
    const uint16_t* do_tile = s_do + buf * BM * kTile;
    const float* lse = s_lse + buf * BM;
    const float* delta = s_delta + buf * BM;
    const bool masked = rb.masked(ib);

    // P^T [16 keys, BM rows] = exp2(K Q^T * scale - lse)
    float pt[NT][4];
    zero(pt);
    mma_a_bt<E, DP, NT>(pt, s_k, key_w, q_tile, a.d, lane);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = nt * 8 + 2 * q + (e & 1);  // row within the block
        float v = fast_exp2(pt[nt][e] * scale_log2 - lse[r] * kLog2e);
        if (masked && !pair_allowed(m0 + r, n0 + key_w + g + (e >> 1) * 8, len, b, t, a.causal)) v = 0.f;
        pt[nt][e] = v;
      }
    // dV += P^T dO
    mma_acc_b<E, DP, BM / 16, NTD, NT>(dv, pt, do_tile, col_w, a.d, lane);
    // dP^T = V dO^T; dS^T = P^T (dP^T - delta)
    float dpt[NT][4];
    zero(dpt);
    mma_a_bt<E, DP, NT>(dpt, s_v, key_w, do_tile, a.d, lane);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) pt[nt][e] *= dpt[nt][e] - delta[nt * 8 + 2 * q + (e & 1)];
    // dK += dS^T Q (times the softmax scale at the end)
    mma_acc_b<E, DP, BM / 16, NTD, NT>(dk, pt, q_tile, col_w, a.d, lane);
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }

  uint16_t* dk_base = static_cast<uint16_t*>(p.dk.ptr) + slot.bos * p.dk.row + kvh * p.dk.head;
  uint16_t* dv_base = static_cast<uint16_t*>(p.dv.ptr) + slot.bos * p.dv.row + kvh * p.dv.head;
  store_acc<E, NTD>(dk_base, p.dk.row, dk, n0 + key_w, col_w, len, a.d, a.scale, a.scale, lane);
  store_acc<E, NTD>(dv_base, p.dv.row, dv, n0 + key_w, col_w, len, a.d, 1.f, 1.f, lane);
}

// dQ of BM query rows of one head; warp w owns rows [16 w, 16 w + 16).
template <typename E, int DP, int BM, int BN>
BTOK_KERNEL(BM / 16 * 32) bwd_dq_kernel(const BwdParams p) {
  constexpr int kThreads = BM / 16 * 32;
  constexpr int NT = BN / 8;
  constexpr int NTD = DP / 8;
  constexpr int kTile = SmemRow<DP>::kStride;
  const AttnParams& a = p.a;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;

  const TileSlot slot = find_tile(a.cu_seqlens, a.n_seqs, blockIdx.x, BM);
  if (slot.tile >= slot.num_tiles) return;
  const int i_m = slot.num_tiles - 1 - slot.tile;
  const int h = blockIdx.y, kvh = h / (a.hq / a.hkv);
  const int len = slot.len;
  const int b = a.causal ? a.btok_start[slot.seq] : 0;
  const int t = a.causal ? a.target_start[slot.seq] : len;
  const int q0 = i_m * BM;
  const BlockRange kb = key_blocks(q0, imin(q0 + BM, len), len, b, t, BN, a.causal);
  const int row_w = warp * 16;

  uint16_t* s_q = dynamic_smem();             // [BM][kTile]
  uint16_t* s_do = s_q + BM * kTile;          // [BM][kTile]
  uint16_t* s_k = s_do + BM * kTile;          // [2][BN][kTile]
  uint16_t* s_v = s_k + 2 * BN * kTile;       // [2][BN][kTile]
  const uint16_t* q_base = static_cast<const uint16_t*>(a.q.ptr) + slot.bos * a.q.row + h * a.q.head;
  const uint16_t* do_base = static_cast<const uint16_t*>(p.dout.ptr) + slot.bos * p.dout.row + h * p.dout.head;
  const uint16_t* k_base = static_cast<const uint16_t*>(a.k.ptr) + slot.bos * a.k.row + kvh * a.k.head;
  const uint16_t* v_base = static_cast<const uint16_t*>(a.v.ptr) + slot.bos * a.v.row + kvh * a.v.head;
  auto load_kv = [&](int ib) {
    const int start_n = kb.lo + ib * BN, buf = ib & 1;
    load_rows<BN, DP, kThreads>(s_k + buf * BN * kTile, k_base, a.k.row, start_n, len, a.d);
    load_rows<BN, DP, kThreads>(s_v + buf * BN * kTile, v_base, a.v.row, start_n, len, a.d);
  };
  load_rows<BM, DP, kThreads>(s_q, q_base, a.q.row, q0, len, a.d);
  load_rows<BM, DP, kThreads>(s_do, do_base, p.dout.row, q0, len, a.d);
  if (kb.num > 0) load_kv(0);
  cp_async_commit();

  // this thread's rows g and g + 8 of the warp: LSE (log2 units) and delta
  float lse_log2[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = q0 + row_w + g + 8 * r;
    const bool in = row < len;
    lse_log2[r] = in ? load_f32(p.lse + h * p.lse_head + slot.bos + row) * kLog2e : 0.f;
    delta[r] = in ? load_f32(p.delta + static_cast<int64_t>(h) * a.total + slot.bos + row) : 0.f;
  }

  float dq[NTD][4];
  zero(dq);
  const float scale_log2 = a.scale * kLog2e;
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
    const int start_n = kb.lo + ib * BN;
    const bool masked = kb.masked(ib);

    float pr[NT][4];  // P [16 rows, BN keys]
    zero(pr);
    mma_a_bt<E, DP, NT>(pr, s_q, row_w, k_tile, a.d, lane);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = fast_exp2(pr[nt][e] * scale_log2 - lse_log2[e >> 1]);
        if (masked && !pair_allowed(q0 + row_w + g + (e >> 1) * 8, start_n + nt * 8 + 2 * q + (e & 1), len, b, t,
                                    a.causal))
          v = 0.f;
        pr[nt][e] = v;
      }
    float dp[NT][4];  // dO V^T
    zero(dp);
    mma_a_bt<E, DP, NT>(dp, s_do, row_w, v_tile, a.d, lane);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) pr[nt][e] *= dp[nt][e] - delta[e >> 1];
    mma_acc_b<E, DP, BN / 16, NTD, NT>(dq, pr, k_tile, 0, a.d, lane);
    __syncthreads();
  }
  uint16_t* dq_base = static_cast<uint16_t*>(p.dq.ptr) + slot.bos * p.dq.row + h * p.dq.head;
  store_acc<E, NTD>(dq_base, p.dq.row, dq, q0 + row_w, 0, len, a.d, a.scale, a.scale, lane);
}

template <typename E, int DP, typename Runner>
typename Runner::Status dispatch_bwd_tier(const BwdParams& p, Runner& run) {
  const AttnParams& a = p.a;
  constexpr int kRow = SmemRow<DP>::kStride * 2;  // bytes per shared-memory row
  {
    using C = DkdvConfig<DP>;
    constexpr int kSmem = (2 * C::BN + 4 * C::BM) * kRow + 4 * C::BM * 4;
    const Grid grid{static_cast<unsigned>(a.total / C::BN + a.n_seqs), static_cast<unsigned>(a.hkv)};
    const auto status = run.launch(bwd_dkdv_kernel<E, DP, C::BN, C::BM, C::DSPLIT>, grid,
                                   C::BN / 16 * C::DSPLIT * 32, kSmem, p);
    if (status != run.ok()) return status;
  }
  using C = DqConfig<DP>;
  constexpr int kSmem = (2 * C::BM + 4 * C::BN) * kRow;
  const Grid grid{static_cast<unsigned>(a.total / C::BM + a.n_seqs), static_cast<unsigned>(a.hq)};
  return run.launch(bwd_dq_kernel<E, DP, C::BM, C::BN>, grid, C::BM / 16 * 32, kSmem, p);
}

template <typename E, typename Runner>
typename Runner::Status dispatch_bwd_dtype(const BwdParams& p, Runner& run) {
  const int64_t warps = static_cast<int64_t>(p.a.total) * p.a.hq;  // one per (token, head)
  const auto status = run.launch(bwd_delta_kernel<E>, Grid{static_cast<unsigned>((warps + 7) / 8), 1}, 256, 0, p);
  if (status != run.ok()) return status;
  switch (padded_head_dim(p.a.d)) {
    case 64: return dispatch_bwd_tier<E, 64>(p, run);
    case 128: return dispatch_bwd_tier<E, 128>(p, run);
    case 256: return dispatch_bwd_tier<E, 256>(p, run);
    default: return run.invalid();
  }
}

// Runs the backward through `run`: nothing for an empty pack.
template <typename Runner>
typename Runner::Status dispatch_bwd(const BwdParams& p, DType dtype, Runner& run) {
  if (p.a.total == 0) return run.ok();
  return dtype == DType::kBF16 ? dispatch_bwd_dtype<BF16>(p, run) : dispatch_bwd_dtype<F16>(p, run);
}

}  // namespace btok
