// CUDA kernels of topk_attention (forward; backward: the softmax gradient on the kept keys) for the
// operators of csrc/bindings/topk_attention.cpp.
#include <torch/library.h>

#include <limits>

#include "bindings/cuda/glue.h"
#include "cuda/topk_attention.cuh"

namespace fastattn::cuda_glue {
namespace {

Tensor3 fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t topk, bool causal, double scale,
            const OptTensor& kpm, const OptTensor& cu_q, const OptTensor& cu_k, int64_t max_q, int64_t max_k) {
  const Call c("topk_attention_fwd (cuda)", q, k, v, kpm, cu_q, cu_k, max_q, max_k);
  TORCH_CHECK(topk >= 1, c.op, ": topk must be >= 1, got ", topk);
  auto out = c.out_rows();
  auto lse = c.row_stat(std::numeric_limits<float>::infinity());
  auto tau = c.row_stat(-std::numeric_limits<float>::infinity());
  cuda::TopkParams p{c.fwd_args(out, causal, scale), lse.data_ptr<float>(), tau.data_ptr<float>(), nullptr, topk};
  at::Tensor scratch;  // the key-split path of decoding
  if (const size_t bytes = cuda::topk_attention_fwd_scratch(p)) {
    scratch = at::empty({static_cast<int64_t>(bytes)}, q.options().dtype(at::kByte));
    p.scratch = scratch.data_ptr();
  }
  c.check(cuda::topk_attention_fwd_cuda(p, c.dtype, c.stream));
  return {out, lse, tau};
}

Tensor3 bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
            const at::Tensor& out, const at::Tensor& lse, const at::Tensor& tau, bool causal, double scale,
            const OptTensor& kpm, const OptTensor& cu_q, const OptTensor& cu_k, int64_t max_q, int64_t max_k) {
  return softmax_backward("topk_attention_bwd (cuda)", dout, q, k, v, out, lse, tau, causal, scale, kpm, cu_q, cu_k,
                          max_q, max_k);
}

}  // namespace
}  // namespace fastattn::cuda_glue

TORCH_LIBRARY_IMPL(fastattn_C, CUDA, m) {
  m.impl("topk_attention_fwd", &fastattn::cuda_glue::fwd);
  m.impl("topk_attention_bwd", &fastattn::cuda_glue::bwd);
}
