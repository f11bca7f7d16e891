// The launch API of the CUDA kernels: plain structs of pointers and strides, so that the
// torch binding (binding.cpp) and the kernels (kernels/*.cu) share no header but this one
// and the CUDA runtime's. Strides count elements; every [T, H, D] tensor has a contiguous
// last dim, 16-byte aligned rows and head dim d (a multiple of 8, at most 256).
#pragma once

#include <cstdint>

#if !defined(BTOK_EMULATE)  // the host emulator (host/emulator.cpp) launches without CUDA
#include <cuda_runtime_api.h>
#endif

namespace btok {

enum class DType { kF16, kBF16 };

// [T, H, D] tensor: data pointer, token stride, head stride
struct Rows {
  const void* ptr;
  int64_t row;
  int64_t head;
};

struct MutRows {
  void* ptr;
  int64_t row;
  int64_t head;
};

struct AttnParams {
  Rows q, k, v;                   // q [T, hq, d], k and v [T, hkv, d]
  const int32_t* cu_seqlens;      // [n_seqs + 1]
  const int32_t* btok_start;      // [n_seqs], relative to each sequence start
  const int32_t* target_start;    // [n_seqs]
  int n_seqs, total, hq, hkv, d;
  float scale;                    // softmax scale (natural units)
  bool causal;                    // false: every row attends its whole sequence
};

struct FwdParams {
  AttnParams a;
  MutRows out;                    // [T, hq, d]
  float* lse;                     // [hq, T] (+ head stride), natural log
  int64_t lse_head;
};

struct BwdParams {
  AttnParams a;
  Rows out, dout;                 // [T, hq, d]
  const float* lse;               // [hq, T] (+ head stride)
  int64_t lse_head;
  float* delta;                   // [hq, T] workspace, contiguous: rowsum(dout * out)
  MutRows dq;                     // [T, hq, d]
  MutRows dk, dv;                 // [T, hkv, d]
};

#if !defined(BTOK_EMULATE)
// Forward: out and lse. Returns the launch error, if any.
cudaError_t launch_fwd(const FwdParams& p, DType dtype, cudaStream_t stream);

// Backward: delta, then dK/dV per key tile (summed over the query heads of each KV head in
// one program: deterministic, no atomics), then dQ per query tile.
cudaError_t launch_bwd(const BwdParams& p, DType dtype, cudaStream_t stream);
#endif

}  // namespace btok
