// Building blocks of the condensation kernels on top of the primitives (CUDA or, for the host
// tests, the emulator): tile loads into shared memory, mma fragments, products of a tile by a
// tile and of an accumulator by a tile, quad reductions, and stores.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane = 4 * g + c:
//   A 16x16, row-major: a0 = A[g][2c, 2c+1]   a1 = A[g+8][2c, 2c+1]
//                       a2 = A[g][2c+8, +9]   a3 = A[g+8][2c+8, +9]
//   B 16x8:             b0 = B[2c, 2c+1][g]   b1 = B[2c+8, 2c+9][g]
//   C 16x8, fp32:       c0, c1 = C[g][2c, 2c+1]   c2, c3 = C[g+8][2c, 2c+1]
// so the accumulators of two adjacent 8-column tiles of C are, once packed to 16 bits, the
// A fragment of the next product (P @ V after Q @ K^T): no shuffle between the two.
#pragma once

#include <cstdint>

#if defined(BTOK_EMULATE)
#include "../host/emulator.h"
#else
#include "primitives_cuda.cuh"
#endif
#include "../tile_plan.h"

namespace btok {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

BTOK_DEVICE float quad_max(float x) {  // over the 4 lanes that hold one row of a C fragment
  x = fmaxf(x, shfl_xor(x, 1));
  return fmaxf(x, shfl_xor(x, 2));
}

BTOK_DEVICE float quad_sum(float x) {
  x += shfl_xor(x, 1);
  return x + shfl_xor(x, 2);
}

// Shared-memory tiles hold ROWS rows of DP (padded head dim) 16-bit elements, each row
// padded by 8 elements so that the 8 rows an ldmatrix reads fall in different banks.
template <int DP>
struct SmemRow {
  static constexpr int kStride = DP + 8;
};

// Rows [row0, row0 + ROWS) of one head of a [T, H, D] tensor (`base` points at the head's
// first element of the sequence) into `dst`; rows past `len` and columns past `d` become 0.
template <int ROWS, int DP, int THREADS>
BTOK_DEVICE void load_rows(uint16_t* dst, const uint16_t* base, int64_t row_stride, int row0, int len, int d) {
  constexpr int kChunks = DP / 8;  // 16-byte chunks per row
  constexpr int kIters = (ROWS * kChunks + THREADS - 1) / THREADS;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int i = it * THREADS + static_cast<int>(threadIdx.x);
    if (kIters * THREADS != ROWS * kChunks && i >= ROWS * kChunks) break;
    const int r = i / kChunks, col = (i % kChunks) * 8;
    const bool valid = row0 + r < len && col < d;
    // the source of a zero-filled chunk is not read; keep it a valid address anyway
    const uint16_t* src = valid ? base + static_cast<int64_t>(row0 + r) * row_stride + col : base;
    cp_async_16(dst + r * SmemRow<DP>::kStride + col, src, valid);
  }
}

// ROWS fp32 values of a row block (LSE, delta) into shared memory; past `len`: 0.
template <int ROWS, int THREADS>
BTOK_DEVICE void load_row_values(float* dst, const float* base, int row0, int len) {
  for (int i = threadIdx.x; i < ROWS; i += THREADS) {
    const bool valid = row0 + i < len;
    cp_async_4(dst + i, valid ? base + row0 + i : base, valid);
  }
}

// A fragment of the 16x16 block at (row0, col0) of a row-major tile.
template <int DP>
BTOK_DEVICE void load_a(uint32_t (&a)[4], const uint16_t* tile, int row0, int col0, int lane) {
  const int row = row0 + (lane & 7) + ((lane >> 3) & 1) * 8;
  const int col = col0 + (lane >> 4) * 8;
  ldmatrix_x4(a, tile + row * SmemRow<DP>::kStride + col);
}

// B fragments of two 8-column tiles when B[k][n] = M[n][k] (B is M transposed, M a row-major
// tile; e.g. K for S = Q K^T): k in [k0, k0 + 16), n in [n0, n0 + 16).
// b[0], b[1]: columns n0..n0+7; b[2], b[3]: columns n0+8..n0+15.
template <int DP>
BTOK_DEVICE void load_b_from_rows(uint32_t (&b)[4], const uint16_t* tile, int n0, int k0, int lane) {
  const int row = n0 + (lane & 7) + (lane >> 4) * 8;
  const int col = k0 + ((lane >> 3) & 1) * 8;
  ldmatrix_x4(b, tile + row * SmemRow<DP>::kStride + col);
}

// B fragments of two 8-column tiles when B[k][n] = M[k][n] (M a row-major tile; e.g. V for
// O = P V): k in [k0, k0 + 16), n in [n0, n0 + 16). Same register order as load_b_from_rows.
template <int DP>
BTOK_DEVICE void load_b_from_cols(uint32_t (&b)[4], const uint16_t* tile, int k0, int n0, int lane) {
  const int row = k0 + (lane & 7) + ((lane >> 3) & 1) * 8;
  const int col = n0 + (lane >> 4) * 8;
  ldmatrix_x4_trans(b, tile + row * SmemRow<DP>::kStride + col);
}

// The A fragment for k-step `ks` of a product whose left operand is the fp32 accumulator
// `c` (16 x 8*NT) of an earlier product, rounded to the element type.
template <typename E, int NT>
BTOK_DEVICE void acc_to_a(uint32_t (&a)[4], const float (&c)[NT][4], int ks) {
  a[0] = E::pack(c[2 * ks][0], c[2 * ks][1]);
  a[1] = E::pack(c[2 * ks][2], c[2 * ks][3]);
  a[2] = E::pack(c[2 * ks + 1][0], c[2 * ks + 1][1]);
  a[3] = E::pack(c[2 * ks + 1][2], c[2 * ks + 1][3]);
}

template <int NT>
BTOK_DEVICE void zero(float (&c)[NT][4]) {
#pragma unroll
  for (int i = 0; i < NT; ++i) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.f;
}

// C (16 x 8*NT) += A (rows [row0, row0 + 16) of a row-major tile) @ M^T where M is a
// row-major tile with rows [0, 8*NT) (S = Q K^T; dP = dO V^T); k-steps past `d` are skipped
// (zero padding).
template <typename E, int DP, int NT>
BTOK_DEVICE void mma_a_bt(float (&c)[NT][4], const uint16_t* a_tile, int row0, const uint16_t* m_tile, int d,
                          int lane) {
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk) {
    if (kk * 16 >= d) break;
    uint32_t a[4];
    load_a<DP>(a, a_tile, row0, kk * 16, lane);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      load_b_from_rows<DP>(b, m_tile, np * 16, kk * 16, lane);
      E::mma(c[2 * np], a, b[0], b[1]);
      E::mma(c[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// C (16 x 8*NT, columns [col0, col0 + 8*NT) of M) += P (fp32 accumulator, 16 x 16*KS) @ M
// where M is a row-major tile with rows [0, 16*KS) (O += P V; dV += P^T dO; dQ += dS K);
// column tiles past `d` are skipped.
template <typename E, int DP, int KS, int NT, int NTP>
BTOK_DEVICE void mma_acc_b(float (&c)[NT][4], const float (&p)[NTP][4], const uint16_t* m_tile, int col0, int d,
                           int lane) {
  static_assert(NTP == 2 * KS, "P must have two 8-column tiles per k-step");
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    uint32_t a[4];
    acc_to_a<E, NTP>(a, p, ks);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      if (col0 + np * 16 >= d) break;
      uint32_t b[4];
      load_b_from_cols<DP>(b, m_tile, ks * 16, col0 + np * 16, lane);
      E::mma(c[2 * np], a, b[0], b[1]);
      E::mma(c[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// Stores a 16 x 8*NT fp32 accumulator (row r times mult[r / 8]) as 16-bit elements: rows
// `row0 + r` of the sequence that are < len, columns `col0 + j` that are < d.
template <typename E, int NT>
BTOK_DEVICE void store_acc(uint16_t* base, int64_t row_stride, const float (&c)[NT][4], int row0, int col0, int len,
                           int d, float mult_lo, float mult_hi, int lane) {
  const int g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + g + 8 * half;
    if (row >= len) continue;
    const float mult = half ? mult_hi : mult_lo;
    uint16_t* p_row = base + static_cast<int64_t>(row) * row_stride;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int col = col0 + nt * 8 + 2 * q;
      if (col < d) store_u32(p_row + col, E::pack(c[nt][2 * half] * mult, c[nt][2 * half + 1] * mult));
    }
  }
}

}  // namespace btok
