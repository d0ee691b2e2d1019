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
             const at::Tensor&, bool, double, int64_t, int64_t) {
  return {at::empty_like(q), at::empty_like(k), at::empty_like(v), at::empty_like(gamma), at::empty_like(sink)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastattn_C, m) {
  m.def("relu_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor gamma, Tensor sink, Tensor alibi_slopes, "
        "Tensor tau, bool causal, float scale, int norm, int quant, bool int8_qkv, "
     FASTATTN_RAGGED_SCHEMA ") -> (Tensor, Tensor, Tensor)");
  m.def("relu_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor den, Tensor argmax, "
        "Tensor gamma, Tensor sink, Tensor alibi_slopes, Tensor tau, bool causal, float scale, int norm, "
        "int quant, " FASTATTN_RAGGED_SCHEMA ") -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastattn_C, CPU, m) {
  m.impl("relu_attention_fwd", fastattn::with_ragged<&fastattn::cpu::relu_attention_fwd_cpu>);
  m.impl("relu_attention_bwd", fastattn::with_ragged<&fastattn::cpu::relu_attention_bwd_cpu>);
}

TORCH_LIBRARY_IMPL(fastattn_C, Meta, m) {
  m.impl("relu_attention_fwd", fastattn::meta_with_ragged<&fwd_meta>);
  m.impl("relu_attention_bwd", fastattn::meta_with_ragged<&bwd_meta>);
}

