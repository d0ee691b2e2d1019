// torch.library glue for softmax_attention: schemas, CPU and Meta kernels (CUDA: csrc/bindings/cuda/).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "bindings/ragged.h"
#include "cpu/attention_common.h"
#include "cpu/softmax_attention.h"

namespace {

using fastattn::OptTensor;

std::tuple<at::Tensor, at::Tensor> fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           bool causal, double scale, const OptTensor& key_padding_mask,
                                           const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k, int64_t,
                                           int64_t) {
  return fastattn::cpu::softmax_attention_fwd_cpu(q, k, v, at::Tensor(), causal, scale,
                                                  {key_padding_mask, cu_seqlens_q, cu_seqlens_k});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_cpu(const at::Tensor& dout, const at::Tensor& q,
                                                       const at::Tensor& k, const at::Tensor& v,
                                                       const at::Tensor& out, const at::Tensor& lse, bool causal,
                                                       double scale, const OptTensor& key_padding_mask,
                                                       const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k,
                                                       int64_t, int64_t) {
  return fastattn::cpu::softmax_attention_bwd_cpu(dout, q, k, v, out, lse, at::Tensor(), causal, scale,
                                                  {key_padding_mask, cu_seqlens_q, cu_seqlens_k});
}

std::tuple<at::Tensor, at::Tensor> fwd_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            bool, double) {
  return {at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options()),
          at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_meta(const at::Tensor&, const at::Tensor& q,
                                                        const at::Tensor& k, const at::Tensor& v,
                                                        const at::Tensor&, const at::Tensor&, bool, double) {
  return {at::empty_like(q), at::empty_like(k), at::empty_like(v)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastattn_C, m) {
  m.def("softmax_attention_fwd(Tensor q, Tensor k, Tensor v, bool causal, float scale, "
        FASTATTN_RAGGED_SCHEMA ") -> (Tensor, Tensor)");
  m.def("softmax_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, bool causal, "
        "float scale, " FASTATTN_RAGGED_SCHEMA ") -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastattn_C, CPU, m) {
  m.impl("softmax_attention_fwd", &fwd_cpu);
  m.impl("softmax_attention_bwd", &bwd_cpu);
}

TORCH_LIBRARY_IMPL(fastattn_C, Meta, m) {
  m.impl("softmax_attention_fwd", fastattn::meta_with_ragged<&fwd_meta>);
  m.impl("softmax_attention_bwd", fastattn::meta_with_ragged<&bwd_meta>);
}

