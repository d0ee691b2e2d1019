// torch.library glue for relu_attention: schemas, CPU and Meta kernels (CUDA: csrc/bindings/cuda/).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "bindings/ragged.h"
#include "cpu/attention_common.h"
#include "cpu/relu_attention.h"

namespace {

using Fwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Bwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Fwd fwd_meta(const at::Tensor& q, const at::Tensor&, const at::Tensor& v, const at::Tensor&, const at::Tensor&,
             const at::Tensor&, const at::Tensor&, bool, double, int64_t, int64_t, bool) {
  return {at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options()),
          at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat)),
          at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kInt))};
}

Bwd bwd_meta(const at::Tensor&, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor&,
             const at::Tensor&, const at::Tensor&, const at::Tensor& gamma, const at::Tensor& sink, const at::Tensor&,
             const at::Tensor&, bool, double, int64_t, int64_t, bool) {
  return {at::empty_like(q), at::empty_like(k), at::empty_like(v), at::empty_like(gamma), at::empty_like(sink)};
}

using fastattn::OptTensor;

Fwd fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& gamma,
            const at::Tensor& sink, const at::Tensor& alibi, const at::Tensor& tau, bool causal, double scale,
            int64_t norm, int64_t quant, bool int8_qkv, const OptTensor& key_padding_mask,
            const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k, int64_t, int64_t) {
  return fastattn::cpu::relu_attention_fwd_cpu(q, k, v, gamma, sink, alibi, tau, causal, scale, norm, quant, int8_qkv,
                                               {key_padding_mask, cu_seqlens_q, cu_seqlens_k});
}

Bwd bwd_cpu(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
            const at::Tensor& out, const at::Tensor& den, const at::Tensor& argmax, const at::Tensor& gamma,
            const at::Tensor& sink, const at::Tensor& alibi, const at::Tensor& tau, bool causal, double scale,
            int64_t norm, int64_t quant, bool int8_qkv, const OptTensor& key_padding_mask,
            const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k, int64_t, int64_t) {
  return fastattn::cpu::relu_attention_bwd_cpu(dout, q, k, v, out, den, argmax, gamma, sink, alibi, tau, causal, scale,
                                               norm, quant, int8_qkv, {key_padding_mask, cu_seqlens_q, cu_seqlens_k});
}

#ifdef FASTATTN_WITH_CUDA
Fwd fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& gamma,
             const at::Tensor& sink, const at::Tensor& alibi, const at::Tensor& tau, bool causal, double scale,
             int64_t norm, int64_t quant, bool int8_qkv) {
  fastattn::cpu::check_attention_inputs("relu_attention_fwd (cuda)", q, k, v, at::kCUDA);
  TORCH_CHECK(!int8_qkv, "relu_attention_fwd (cuda): int8_qkv is implemented by the triton and cpu backends");
  auto [out, den, argmax] = fwd_meta(q, k, v, gamma, sink, alibi, tau, causal, scale, norm, quant, int8_qkv);
  out = at::empty(out.sizes(), q.options());
  den = at::empty(den.sizes(), q.options().dtype(at::kFloat));
  argmax = at::empty(argmax.sizes(), q.options().dtype(at::kInt));
  fastattn::cuda::ReluParams p{q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), den.data_ptr<float>(),
                               argmax.data_ptr<int32_t>(), gamma.data_ptr<float>(), sink.data_ptr<float>(),
                               alibi.numel() ? alibi.data_ptr<float>() : nullptr,
                               tau.numel() ? tau.data_ptr<float>() : nullptr,
                               q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), v.size(3),
                               causal, static_cast<float>(scale), static_cast<int>(norm), static_cast<int>(quant)};
  const int dtype = q.scalar_type() == at::kFloat ? 0 : (q.scalar_type() == at::kHalf ? 1 : 2);
  const cudaError_t err = fastattn::cuda::relu_attention_fwd_cuda(p, dtype, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "relu_attention_fwd (cuda): ", cudaGetErrorString(err));
  return {out, den, argmax};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastattn_C, m) {
  m.def("relu_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor gamma, Tensor sink, Tensor alibi_slopes, "
        "Tensor tau, bool causal, float scale, int norm, int quant, bool int8_qkv, "
     FASTATTN_RAGGED_SCHEMA ") -> (Tensor, Tensor, Tensor)");
  m.def("relu_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor den, Tensor argmax, "
        "Tensor gamma, Tensor sink, Tensor alibi_slopes, Tensor tau, bool causal, float scale, int norm, "
        "int quant, bool int8_qkv, " FASTATTN_RAGGED_SCHEMA ") -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastattn_C, CPU, m) {
  m.impl("relu_attention_fwd", &fwd_cpu);
  m.impl("relu_attention_bwd", &bwd_cpu);
}

TORCH_LIBRARY_IMPL(fastattn_C, Meta, m) {
  m.impl("relu_attention_fwd", fastattn::meta_with_ragged<&fwd_meta>);
  m.impl("relu_attention_bwd", fastattn::meta_with_ragged<&bwd_meta>);
}

