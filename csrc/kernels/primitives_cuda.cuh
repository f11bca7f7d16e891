// The device primitives the kernels are written in, for CUDA (sm_80 and newer): element
// conversions, tensor-core mma.sync (m16n8k16, fp32 accumulation), ldmatrix, cp.async with
// zero fill, warp shuffles, global loads and stores. csrc/host/emulator.h defines the same
// names for the host, where the kernels run in a warp-synchronous emulator for the tests.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#define BTOK_DEVICE __device__ __forceinline__
#define BTOK_KERNEL(threads) __global__ void __launch_bounds__(threads)

namespace btok {

// Element types: tensors are read and written as raw 16-bit words; these tags say how to
// convert and which mma to issue.
struct F16 {
  static BTOK_DEVICE uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  static BTOK_DEVICE float to_float(uint16_t x) { return __half2float(__ushort_as_half(x)); }
  static BTOK_DEVICE void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

struct BF16 {
  static BTOK_DEVICE uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  static BTOK_DEVICE float to_float(uint16_t x) { return __bfloat162float(__ushort_as_bfloat16(x)); }
  static BTOK_DEVICE void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

BTOK_DEVICE float fast_exp2(float x) {  // exp2(-inf) = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

BTOK_DEVICE float shfl_xor(float x, int lane_mask) { return __shfl_xor_sync(0xffffffffu, x, lane_mask); }

BTOK_DEVICE uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// The dynamic shared memory of every kernel (one declaration: template instances share it).
BTOK_DEVICE uint16_t* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char btok_dynamic_smem[];
  return reinterpret_cast<uint16_t*>(btok_dynamic_smem);
}

// global -> shared copies; where `valid` is false the destination is zero-filled and the
// source is not read
BTOK_DEVICE void cp_async_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 16 : 0));
}

BTOK_DEVICE void cp_async_4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 4 : 0));
}

BTOK_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
BTOK_DEVICE void cp_async_wait() {  // all but the N most recent groups have landed
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// four 8x8 matrices of 16-bit elements from shared memory; lane 8m + i gives row i of
// matrix m; lane 4g + c receives elements (g, 2c) and (g, 2c + 1) of each matrix, or with
// .trans (2c, g) and (2c + 1, g)
BTOK_DEVICE void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row)));
}

BTOK_DEVICE void ldmatrix_x4_trans(uint32_t (&r)[4], const uint16_t* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row)));
}

BTOK_DEVICE uint4 load_u128(const void* p) { return *static_cast<const uint4*>(p); }
BTOK_DEVICE float load_f32(const float* p) { return *p; }
BTOK_DEVICE void store_u32(void* p, uint32_t v) { *static_cast<uint32_t*>(p) = v; }
BTOK_DEVICE void store_f32(float* p, float v) { *p = v; }

}  // namespace btok
