// torch.library glue for adaptive_span_attention: schemas, CPU and Meta kernels (CUDA:
// csrc/bindings/cuda/). Absent period/phase travel as empty tensors (the schema takes Tensor).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/adaptive_span_attention.h"
#include "bindings/ragged.h"
#include "cpu/attention_common.h"

namespace {

using Fwd = std::tuple<at::Tensor, at::Tensor>;
using Bwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Fwd fwd_meta(const at::Tensor& q, const at::Tensor&, const at::Tensor& v, const at::Tensor&, const at::Tensor&,
             const at::Tensor&, double, double, bool, double) {
  return {at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options()),
          at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat))};
}

Bwd bwd_meta(const at::Tensor&, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor&,
             const at::Tensor&, const at::Tensor& span, const at::Tensor& period, const at::Tensor&, double, double,
             bool, double) {
  // period is (Hq,) or (0,): dperiod and dphase take its shape.
  return {at::empty_like(q), at::empty_like(k), at::empty_like(v), at::empty_like(span), at::empty_like(period),
          at::empty_like(period)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastattn_C, m) {
  m.def("adaptive_span_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor span, Tensor period, Tensor phase, "
        "float ramp, float duty, bool causal, float scale, " FASTATTN_RAGGED_SCHEMA ") -> (Tensor, Tensor)");
  m.def("adaptive_span_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor span, Tensor period, Tensor phase, float ramp, float duty, bool causal, float scale, "
     FASTATTN_RAGGED_SCHEMA ") -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastattn_C, CPU, m) {
  m.impl("adaptive_span_attention_fwd", fastattn::with_ragged<&fastattn::cpu::adaptive_span_attention_fwd_cpu>);
  m.impl("adaptive_span_attention_bwd", fastattn::with_ragged<&fastattn::cpu::adaptive_span_attention_bwd_cpu>);
}

TORCH_LIBRARY_IMPL(fastattn_C, Meta, m) {
  m.impl("adaptive_span_attention_fwd", fastattn::meta_with_ragged<&fwd_meta>);
  m.impl("adaptive_span_attention_bwd", fastattn::meta_with_ragged<&bwd_meta>);
}

