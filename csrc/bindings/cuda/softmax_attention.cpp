// CUDA kernels of softmax_attention (forward, backward) for the operators of csrc/bindings/softmax_attention.cpp.
#include <torch/library.h>

#include "bindings/cuda/glue.h"
#include "cuda/softmax_attention.cuh"

namespace fastattn::cuda_glue {

Tensor3 softmax_backward(const char* op, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                         const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& tau,
                         bool causal, double scale, const OptTensor& kpm, const OptTensor& cu_q, const OptTensor& cu_k,
                         int64_t max_q, int64_t max_k) {
  const Call c(op, q, k, v, kpm, cu_q, cu_k, max_q, max_k);
  c.check_rows(out, "out");
  const cuda::Shape& d = c.shape;
  const Tensor3 grads = c.zero_grads();
  auto delta = at::zeros({d.B, d.Hq, d.Nq}, q.options().dtype(at::kFloat));
  const cuda::SoftmaxBwdParams p{c.bwd_args(dout, grads, causal, scale), out.data_ptr(),
                                 c.f32(lse, "lse", {d.B, d.Hq, d.Nq}), c.f32(tau, "tau", {d.B, d.Hq, d.Nq}, true),
                                 delta.data_ptr<float>()};
  c.check(cuda::softmax_attention_bwd_cuda(p, c.dtype, c.stream));
  return grads;
}

namespace {

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
                                       double scale, const OptTensor& kpm, const OptTensor& cu_q, const OptTensor& cu_k,
                                       int64_t max_q, int64_t max_k) {
  const Call c("softmax_attention_fwd (cuda)", q, k, v, kpm, cu_q, cu_k, max_q, max_k);
  auto out = c.out_rows();
  auto lse = c.row_stat(std::numeric_limits<float>::infinity());
  const cuda::SoftmaxParams p{c.fwd_args(out, causal, scale), lse.data_ptr<float>()};
  c.check(cuda::softmax_attention_fwd_cuda(p, c.dtype, c.stream));
  return {out, lse};
}

Tensor3 bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
            const at::Tensor& out, const at::Tensor& lse, bool causal, double scale, const OptTensor& kpm,
            const OptTensor& cu_q, const OptTensor& cu_k, int64_t max_q, int64_t max_k) {
  return softmax_backward("softmax_attention_bwd (cuda)", dout, q, k, v, out, lse, at::Tensor(), causal, scale, kpm,
                          cu_q, cu_k, max_q, max_k);
}

}  // namespace
}  // namespace fastattn::cuda_glue

TORCH_LIBRARY_IMPL(fastattn_C, CUDA, m) {
  m.impl("softmax_attention_fwd", &fastattn::cuda_glue::fwd);
  m.impl("softmax_attention_bwd", &fastattn::cuda_glue::bwd);
}
