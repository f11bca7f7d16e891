// The CUDA launch of the backward (bwd.cuh).
#include "../launch.h"
#include "bwd.cuh"
#include "cuda_runner.cuh"

namespace btok {

cudaError_t launch_bwd(const BwdParams& p, DType dtype, cudaStream_t stream) {
  CudaRunner run{stream};
  return dispatch_bwd(p, dtype, run);
}

}  // namespace btok
