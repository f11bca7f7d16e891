// The primitives of csrc/kernels/primitives_cuda.cuh for the host: with BTOK_EMULATE defined,
// the kernels compile with a host C++ compiler and run in a SIMT emulator (emulator.cpp),
// one fiber per CUDA thread, so that the tests can check them against a float64 oracle on a
// machine without a GPU.
//
// What is emulated, following the PTX ISA: mma.sync m16n8k16 (fp16/bf16 in, fp32 out; the
// products are exact in fp32 and summed in k order), ldmatrix .x4 and .x4.trans, cp.async
// with zero fill (landing at issue or, to expose a missing wait, only at the wait), warp
// shuffles, __syncthreads. Warp collectives check that all 32 lanes reach the same one;
// a barrier that some thread never reaches is reported as a deadlock; shared-memory and
// global addresses are bounds- and alignment-checked. What is not: timing, memory ordering
// beyond the barriers, ex2.approx's rounding (exp2f here).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#define BTOK_DEVICE inline
#define BTOK_KERNEL(threads) void

struct uint4 {
  uint32_t x, y, z, w;
};

namespace btok {
namespace emu {

struct Dim3 {
  unsigned x, y, z;
};

// 16-bit formats, round to nearest even (what __floats2half2_rn and __floats2bfloat162_rn do)
inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

inline float bf16_to_f32(uint16_t h) {
  const uint32_t x = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return static_cast<uint16_t>(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to 65520 or more: inf
  if (ax < 0x38800000u) {  // below 2^-14: a subnormal half, in units of 2^-24
    const int e = static_cast<int>(ax >> 23);
    if (e < 102) return static_cast<uint16_t>(sign);  // below 2^-25
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const int shift = 126 - e;
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t h = (((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return static_cast<uint16_t>(sign | h);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
  if (e == 0x1f) {
    x = sign | 0x7f800000u | (m << 13);
  } else if (e != 0) {
    x = sign | ((e + 112u) << 23) | (m << 13);
  } else if (m == 0) {
    x = sign;
  } else {  // subnormal: normalise
    e = 113;
    while (!(m & 0x400u)) {
      m <<= 1;
      --e;
    }
    x = sign | (e << 23) | ((m & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// emulator.cpp
enum class Elem { kF16, kBF16 };
void mma(Elem e, float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void ldmatrix(uint32_t (&r)[4], const uint16_t* row, bool trans);
float shfl_xor(float x, int lane_mask);
uint16_t* dynamic_smem();
void cp_async(void* dst, const void* src, int bytes, bool valid);
void cp_async_commit();
void cp_async_wait(int pending_groups);
void block_sync();
void check_global(const void* p, int bytes, bool write);

}  // namespace emu

struct F16 {
  static uint32_t pack(float lo, float hi) { return emu::f32_to_f16(lo) | static_cast<uint32_t>(emu::f32_to_f16(hi)) << 16; }
  static float to_float(uint16_t x) { return emu::f16_to_f32(x); }
  static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    emu::mma(emu::Elem::kF16, d, a, b0, b1);
  }
};

struct BF16 {
  static uint32_t pack(float lo, float hi) {
    return emu::f32_to_bf16(lo) | static_cast<uint32_t>(emu::f32_to_bf16(hi)) << 16;
  }
  static float to_float(uint16_t x) { return emu::bf16_to_f32(x); }
  static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    emu::mma(emu::Elem::kBF16, d, a, b0, b1);
  }
};

inline float fast_exp2(float x) { return std::exp2(x); }
inline float shfl_xor(float x, int lane_mask) { return emu::shfl_xor(x, lane_mask); }
inline uint16_t* dynamic_smem() { return emu::dynamic_smem(); }
inline void cp_async_16(void* dst, const void* src, bool valid) { emu::cp_async(dst, src, 16, valid); }
inline void cp_async_4(void* dst, const void* src, bool valid) { emu::cp_async(dst, src, 4, valid); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  emu::cp_async_wait(N);
}
inline void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* row) { emu::ldmatrix(r, row, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const uint16_t* row) { emu::ldmatrix(r, row, true); }

inline uint4 load_u128(const void* p) {
  emu::check_global(p, 16, false);
  uint4 v;
  std::memcpy(&v, p, 16);
  return v;
}
inline float load_f32(const float* p) {
  emu::check_global(p, 4, false);
  return *p;
}
inline void store_u32(void* p, uint32_t v) {
  emu::check_global(p, 4, true);
  std::memcpy(p, &v, 4);
}
inline void store_f32(float* p, float v) {
  emu::check_global(p, 4, true);
  *p = v;
}

}  // namespace btok

// the CUDA built-ins the kernels name directly
extern btok::emu::Dim3 threadIdx, blockIdx;
inline void __syncthreads() { btok::emu::block_sync(); }
