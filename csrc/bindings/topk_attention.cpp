// torch.library glue for topk_attention: the threshold op (shared with relu_attention(topk=K)) and
// the attention op (selection + softmax over the selected keys; backward: the softmax kernel masked
// to s >= tau); CPU and Meta kernels (CUDA: csrc/bindings/cuda/).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "bindings/ragged.h"
#include "cpu/attention_common.h"
#include "cpu/softmax_attention.h"
#include "cpu/topk_attention.h"

namespace {

using fastattn::OptTensor;

at::Tensor threshold_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& gamma,
                         const at::Tensor& alibi_slopes, bool causal, double scale, int64_t topk,
                         const OptTensor& key_padding_mask, const OptTensor& cu_seqlens_q,
                         const OptTensor& cu_seqlens_k, int64_t, int64_t) {
  return fastattn::cpu::topk_attention_threshold_cpu(q, k, gamma, alibi_slopes, causal, scale, topk,
                                                     {key_padding_mask, cu_seqlens_q, cu_seqlens_k});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       int64_t topk, bool causal, double scale,
                                                       const OptTensor& key_padding_mask, const OptTensor& cu_seqlens_q,
                                                       const OptTensor& cu_seqlens_k, int64_t, int64_t) {
  return fastattn::cpu::topk_attention_fwd_cpu(q, k, v, topk, causal, scale,
                                               {key_padding_mask, cu_seqlens_q, cu_seqlens_k});
}

// The backward is the softmax kernel's, masked to s >= tau.
std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_cpu(const at::Tensor& dout, const at::Tensor& q,
                                                       const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                                       const at::Tensor& lse, const at::Tensor& tau, bool causal,
                                                       double scale, const OptTensor& key_padding_mask,
                                                       const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k,
                                                       int64_t, int64_t) {
  return fastattn::cpu::softmax_attention_bwd_cpu(dout, q, k, v, out, lse, tau, causal, scale,
                                                  {key_padding_mask, cu_seqlens_q, cu_seqlens_k});
}

at::Tensor threshold_meta(const at::Tensor& q, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, double,
                          int64_t) {
  return at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd_meta(const at::Tensor& q, const at::Tensor&, const at::Tensor& v,
                                                        int64_t, bool, double) {
  auto stat = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  return {at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options()), stat, at::empty_like(stat)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_meta(const at::Tensor&, const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v, const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, bool, double) {
  return {at::empty_like(q), at::empty_like(k), at::empty_like(v)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastattn_C, m) {
  m.def("topk_attention_threshold(Tensor q, Tensor k, Tensor gamma, Tensor alibi_slopes, bool causal, float scale, "
        "int topk, " FASTATTN_RAGGED_SCHEMA ") -> Tensor");
  m.def("topk_attention_fwd(Tensor q, Tensor k, Tensor v, int topk, bool causal, float scale, "
        FASTATTN_RAGGED_SCHEMA ") -> (Tensor, Tensor, Tensor)");
  m.def("topk_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor tau, "
        "bool causal, float scale, " FASTATTN_RAGGED_SCHEMA ") -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastattn_C, CPU, m) {
  m.impl("topk_attention_threshold", &threshold_cpu);
  m.impl("topk_attention_fwd", &fwd_cpu);
  m.impl("topk_attention_bwd", &bwd_cpu);
}

TORCH_LIBRARY_IMPL(fastattn_C, Meta, m) {
  m.impl("topk_attention_threshold", fastattn::meta_with_ragged<&threshold_meta>);
  m.impl("topk_attention_fwd", fastattn::meta_with_ragged<&fwd_meta>);
  m.impl("topk_attention_bwd", fastattn::meta_with_ragged<&bwd_meta>);
}

