// CUDA kernels of adaptive_span_attention (forward, backward) for the operators of
// csrc/bindings/adaptive_span_attention.cpp. Absent period/phase travel as empty tensors.
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "bindings/cuda/glue.h"
#include "cuda/adaptive_span_attention.cuh"

namespace fastattn::cuda_glue {
namespace {

using Fwd = std::tuple<at::Tensor, at::Tensor>;
using Bwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The per-head parameters and the plan's scratch of a call; `gated`: a period/phase pair was given.
struct SpanArgs {
  const float *span, *period, *phase;
  at::Tensor idx, cnt;  // the plan (empty without a gate)
  cuda::SpanPlan plan() { return {idx.defined() ? idx.data_ptr<int32_t>() : nullptr, cnt.defined() ? cnt.data_ptr<int32_t>() : nullptr}; }
};

SpanArgs span_args(const Call& c, const at::Tensor& span, const at::Tensor& period, const at::Tensor& phase,
                   double ramp, double duty) {
  const int64_t Hq = c.shape.Hq;
  TORCH_CHECK((period.numel() == 0) == (phase.numel() == 0), c.op, ": period and phase are given together or not at all");
  TORCH_CHECK(ramp > 0 && std::isfinite(ramp), c.op, ": ramp must be a finite float > 0, got ", ramp);
  TORCH_CHECK(duty >= 0 && duty < 1, c.op, ": duty must be in [0, 1), got ", duty);
  SpanArgs a{c.f32(span, "span", {Hq}), c.f32(period, "period", {Hq}, true), c.f32(phase, "phase", {Hq}, true), {}, {}};
  if (a.period) {
    const int64_t plan_seqs = c.packed() ? c.ragged.num_seqs : 1;
    a.idx = at::empty({Hq, c.shape.Nq}, c.q.options().dtype(at::kInt));
    a.cnt = at::empty({plan_seqs, Hq}, c.q.options().dtype(at::kInt));
  }
  return a;
}

Fwd fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& span, const at::Tensor& period,
        const at::Tensor& phase, double ramp, double duty, bool causal, double scale, const OptTensor& kpm,
        const OptTensor& cu_q, const OptTensor& cu_k, int64_t max_q, int64_t max_k) {
  const Call c("adaptive_span_attention_fwd (cuda)", q, k, v, kpm, cu_q, cu_k, max_q, max_k);
  SpanArgs a = span_args(c, span, period, phase, ramp, duty);
  const cuda::Shape& d = c.shape;
  // Gated-off rows are not computed: zeros and lse = +inf.
  auto out = at::zeros({d.B, d.Hq, d.Nq, d.Dv}, q.options());
  auto lse = at::full({d.B, d.Hq, d.Nq}, std::numeric_limits<float>::infinity(), q.options().dtype(at::kFloat));
  const cuda::SpanParams p{c.fwd_args(out, causal, scale), lse.data_ptr<float>(), a.span, a.period, a.phase, a.plan(),
                           static_cast<float>(ramp), static_cast<float>(duty)};
  c.check(cuda::adaptive_span_attention_fwd_cuda(p, c.dtype, c.stream));
  return {out, lse};
}

Bwd bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
        const at::Tensor& lse, const at::Tensor& span, const at::Tensor& period, const at::Tensor& phase, double ramp,
        double duty, bool causal, double scale, const OptTensor& kpm, const OptTensor& cu_q, const OptTensor& cu_k,
        int64_t max_q, int64_t max_k) {
  const Call c("adaptive_span_attention_bwd (cuda)", q, k, v, kpm, cu_q, cu_k, max_q, max_k);
  SpanArgs a = span_args(c, span, period, phase, ramp, duty);
  c.check_rows(out, "out");
  const cuda::Shape& d = c.shape;
  auto f32 = q.options().dtype(at::kFloat);
  const auto [dq, dk, dv] = c.zero_grads();
  auto rows = at::zeros({3, d.B, d.Hq, d.Nq}, f32);  // delta, dL/dg, dL/dspan terms per row
  const int64_t n_gate = a.period ? d.Hq : 0;
  auto dspan = at::zeros({d.Hq}, f32), dperiod = at::zeros({n_gate}, f32), dphase = at::zeros({n_gate}, f32);
  const cuda::SpanBwdParams p{c.bwd_args(dout, {dq, dk, dv}, causal, scale), out.data_ptr(),
                              c.f32(lse, "lse", {d.B, d.Hq, d.Nq}), a.span, a.period, a.phase, a.plan(),
                              rows[0].data_ptr<float>(), rows[1].data_ptr<float>(), rows[2].data_ptr<float>(),
                              dspan.data_ptr<float>(), n_gate ? dperiod.data_ptr<float>() : nullptr,
                              n_gate ? dphase.data_ptr<float>() : nullptr, static_cast<float>(ramp),
                              static_cast<float>(duty)};
  c.check(cuda::adaptive_span_attention_bwd_cuda(p, c.dtype, c.stream));
  return {dq, dk, dv, dspan, dperiod, dphase};
}

}  // namespace
}  // namespace fastattn::cuda_glue

TORCH_LIBRARY_IMPL(fastattn_C, CUDA, m) {
  m.impl("adaptive_span_attention_fwd", &fastattn::cuda_glue::fwd);
  m.impl("adaptive_span_attention_bwd", &fastattn::cuda_glue::bwd);
}
