// Launches a kernel instance on a CUDA stream for the dispatchers of fwd.cuh and bwd.cuh.
#pragma once

#include <cuda_runtime.h>

#include "config.h"

namespace btok {

struct CudaRunner {
  using Status = cudaError_t;
  cudaStream_t stream;

  Status ok() const { return cudaSuccess; }
  Status invalid() const { return cudaErrorInvalidValue; }

  template <typename Params>
  Status launch(void (*kernel)(Params), Grid grid, int threads, int smem_bytes, const Params& p) {
    if (smem_bytes > 48 * 1024) {  // above the default: opt in (sm_80 allows 163 KiB, sm_90 227 KiB)
      const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
      if (err != cudaSuccess) return err;
    }
    kernel<<<dim3(grid.x, grid.y), threads, smem_bytes, stream>>>(p);
    return cudaGetLastError();
  }
};

}  // namespace btok
