// The torch ops btok_cuda::fwd and btok_cuda::bwd: argument checks (TORCH_CHECK, naming the
// argument) and the calls into the kernels' launch API (launch.h).
//
// This file needs only torch's device-generic headers and the CUDA runtime header, so that
// it compiles against a CPU build of torch too (csrc/check_build.sh); the current stream
// comes through c10's device-generic guard.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "launch.h"

namespace {

constexpr int64_t kMaxHeadDim = 256;

// q, k, v, out, dout: [T, H, D] on one CUDA device, fp16 or bf16, last dim contiguous, rows
// and heads 16-byte aligned.
void check_rows(const at::Tensor& x, const char* name, const at::Tensor& like) {
  TORCH_CHECK(x.is_cuda(), "btok_cuda: ", name, " must be a CUDA tensor, got one on ", x.device());
  TORCH_CHECK(x.device() == like.device(), "btok_cuda: ", name, " is on ", x.device(), " but q is on ", like.device());
  TORCH_CHECK(x.dim() == 3, "btok_cuda: ", name, " must be 3-D [total_tokens, heads, head_dim], got shape ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == like.scalar_type(), "btok_cuda: ", name, " has dtype ", x.scalar_type(),
              " but q has ", like.scalar_type());
  TORCH_CHECK(x.stride(2) == 1, "btok_cuda: ", name, " must have a contiguous last dim, got strides ", x.strides());
  TORCH_CHECK(x.stride(0) % 8 == 0 && x.stride(1) % 8 == 0 &&
                  reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0,
              "btok_cuda: ", name, " must have 16-byte aligned rows (token and head strides multiples of 8 ",
              "elements, aligned data pointer), got strides ", x.strides(),
              "; pass x.contiguous() (btok_kernels.condensation.cuda does)");
}

void check_int_vector(const at::Tensor& x, const char* name, int64_t n, const at::Tensor& q) {
  TORCH_CHECK(x.device() == q.device(), "btok_cuda: ", name, " must be on q's device ", q.device(), ", got ",
              x.device());
  TORCH_CHECK(x.scalar_type() == at::kInt, "btok_cuda: ", name, " must have dtype int32, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 1 && x.size(0) == n && x.is_contiguous(), "btok_cuda: ", name,
              " must be a contiguous 1-D tensor of ", n, " entries, got shape ", x.sizes());
}

// Checks shared by fwd and bwd; returns the kernels' view of the problem.
btok::AttnParams attn_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& cu_seqlens, const at::Tensor& btok_start,
                             const at::Tensor& target_start, double softmax_scale, bool causal) {
  TORCH_CHECK(q.is_cuda(), "btok_cuda: q must be a CUDA tensor, got one on ", q.device());
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16,
              "btok_cuda: q, k and v must be float16 or bfloat16, got ", q.scalar_type(),
              " (float32 runs on backend='triton' or 'reference')");
  check_rows(q, "q", q);
  check_rows(k, "k", q);
  check_rows(v, "v", q);
  const int64_t total = q.size(0), hq = q.size(1), d = q.size(2), hkv = k.size(1);
  TORCH_CHECK(k.sizes() == v.sizes(), "btok_cuda: k and v must have the same shape, got ", k.sizes(), " and ",
              v.sizes());
  TORCH_CHECK(k.size(0) == total && k.size(2) == d, "btok_cuda: k must have shape [", total, ", Hkv, ", d,
              "] to match q ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(hkv > 0 && hq % hkv == 0, "btok_cuda: the number of query heads (", hq,
              ") must be a multiple of the number of KV heads (", hkv, ")");
  TORCH_CHECK(d % 8 == 0 && d >= 8 && d <= kMaxHeadDim, "btok_cuda: head_dim must be a multiple of 8 from 8 to ",
              kMaxHeadDim, ", got ", d);
  TORCH_CHECK(total < (int64_t{1} << 31), "btok_cuda: q holds ", total, " tokens, more than int32 offsets allow");
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 2, "btok_cuda: cu_seqlens must be 1-D with at least 2 ",
              "entries, got shape ", cu_seqlens.sizes());
  const int64_t n = cu_seqlens.size(0) - 1;
  check_int_vector(cu_seqlens, "cu_seqlens", n + 1, q);
  check_int_vector(btok_start, "btok_start", n, q);
  check_int_vector(target_start, "target_start", n, q);
  TORCH_CHECK(softmax_scale > 0 && std::isfinite(softmax_scale),
              "btok_cuda: softmax_scale must be a positive finite number, got ", softmax_scale);
  btok::AttnParams a{};
  a.q = {q.data_ptr(), q.stride(0), q.stride(1)};
  a.k = {k.data_ptr(), k.stride(0), k.stride(1)};
  a.v = {v.data_ptr(), v.stride(0), v.stride(1)};
  a.cu_seqlens = cu_seqlens.data_ptr<int32_t>();
  a.btok_start = btok_start.data_ptr<int32_t>();
  a.target_start = target_start.data_ptr<int32_t>();
  a.n_seqs = static_cast<int>(n);
  a.total = static_cast<int>(total);
  a.hq = static_cast<int>(hq);
  a.hkv = static_cast<int>(hkv);
  a.d = static_cast<int>(d);
  a.scale = static_cast<float>(softmax_scale);
  a.causal = causal;
  return a;
}

cudaStream_t current_stream(const at::Tensor& q) {
  const c10::impl::VirtualGuardImpl impl(q.device().type());
  return static_cast<cudaStream_t>(impl.getStream(q.device()).native_handle());
}

btok::DType dtype_of(const at::Tensor& q) { return q.scalar_type() == at::kBFloat16 ? btok::DType::kBF16 : btok::DType::kF16; }

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "btok_cuda: launching the ", what, " kernels failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& cu_seqlens, const at::Tensor& btok_start,
                                       const at::Tensor& target_start, double softmax_scale, bool causal) {
  btok::FwdParams p{};
  p.a = attn_params(q, k, v, cu_seqlens, btok_start, target_start, softmax_scale, causal);
  const c10::DeviceGuard guard(q.device());
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({q.size(1), q.size(0)}, q.options().dtype(at::kFloat));
  p.out = {out.data_ptr(), out.stride(0), out.stride(1)};
  p.lse = lse.data_ptr<float>();
  p.lse_head = lse.stride(0);
  check_launch(btok::launch_fwd(p, dtype_of(q), current_stream(q)), "forward");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                                   const at::Tensor& cu_seqlens, const at::Tensor& btok_start,
                                                   const at::Tensor& target_start, double softmax_scale,
                                                   bool causal) {
  btok::BwdParams p{};
  p.a = attn_params(q, k, v, cu_seqlens, btok_start, target_start, softmax_scale, causal);
  check_rows(out, "out", q);
  check_rows(dout, "dout", q);
  TORCH_CHECK(out.sizes() == q.sizes() && dout.sizes() == q.sizes(), "btok_cuda: out and dout must have q's shape ",
              q.sizes(), ", got ", out.sizes(), " and ", dout.sizes());
  TORCH_CHECK(lse.device() == q.device() && lse.scalar_type() == at::kFloat && lse.dim() == 2 &&
                  lse.size(0) == q.size(1) && lse.size(1) == q.size(0) && lse.stride(1) == 1,
              "btok_cuda: lse must be the forward's float32 [Hq, T] = [", q.size(1), ", ", q.size(0),
              "] with contiguous rows on q's device, got ", lse.scalar_type(), " ", lse.sizes(), " strides ",
              lse.strides(), " on ", lse.device());
  const c10::DeviceGuard guard(q.device());
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  at::Tensor delta = at::empty({q.size(1), q.size(0)}, q.options().dtype(at::kFloat));
  p.out = {out.data_ptr(), out.stride(0), out.stride(1)};
  p.dout = {dout.data_ptr(), dout.stride(0), dout.stride(1)};
  p.lse = lse.data_ptr<float>();
  p.lse_head = lse.stride(0);
  p.delta = delta.data_ptr<float>();
  p.dq = {dq.data_ptr(), dq.stride(0), dq.stride(1)};
  p.dk = {dk.data_ptr(), dk.stride(0), dk.stride(1)};
  p.dv = {dv.data_ptr(), dv.stride(0), dv.stride(1)};
  check_launch(btok::launch_bwd(p, dtype_of(q), current_stream(q)), "backward");
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY(btok_cuda, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, Tensor btok_start, Tensor target_start, "
      "float softmax_scale, bool causal=True) -> (Tensor out, Tensor lse)");
  m.def(
      "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor cu_seqlens, "
      "Tensor btok_start, Tensor target_start, float softmax_scale, bool causal=True) -> "
      "(Tensor dq, Tensor dk, Tensor dv)");
}

TORCH_LIBRARY_IMPL(btok_cuda, CUDA, m) {
  m.impl("fwd", &fwd);
  m.impl("bwd", &bwd);
}
