// The CUDA launch of the forward (fwd.cuh).
#include "../launch.h"
#include "cuda_runner.cuh"
#include "fwd.cuh"

namespace btok {

cudaError_t launch_fwd(const FwdParams& p, DType dtype, cudaStream_t stream) {
  CudaRunner run{stream};
  return dispatch_fwd(p, dtype, run);
}

}  // namespace btok
