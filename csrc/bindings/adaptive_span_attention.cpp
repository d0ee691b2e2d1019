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

using fastattn::OptTensor;

Fwd fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& span,
            const at::Tensor& period, const at::Tensor& phase, double ramp, double duty, bool causal, double scale,
            const OptTensor& key_padding_mask, const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k, int64_t,
            int64_t) {
  return fastattn::cpu::adaptive_span_attention_fwd_cpu(q, k, v, span, period, phase, ramp, duty, causal, scale,
                                                        {key_padding_mask, cu_seqlens_q, cu_seqlens_k});
}

Bwd bwd_cpu(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
            const at::Tensor& out, const at::Tensor& lse, const at::Tensor& span, const at::Tensor& period,
            const at::Tensor& phase, double ramp, double duty, bool causal, double scale,
            const OptTensor& key_padding_mask, const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k, int64_t,
            int64_t) {
  return fastattn::cpu::adaptive_span_attention_bwd_cpu(dout, q, k, v, out, lse, span, period, phase, ramp, duty,
                                                        causal, scale, {key_padding_mask, cu_seqlens_q, cu_seqlens_k});
}

#ifdef FASTATTN_WITH_CUDA
// The host half of the skipping plan (O(Hq * Nq) torch ops on the device, as
// fastattn.kernels.adaptive_span_attention.plan): each head's active rows (g > 0) first, in order.
Fwd fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& span,
             const at::Tensor& period, const at::Tensor& phase, double ramp, double duty, bool causal, double scale) {
  constexpr const char* op = "adaptive_span_attention_fwd (cuda)";
  fastattn::cpu::check_attention_inputs(op, q, k, v, at::kCUDA);
  const auto dt = q.scalar_type();
  const int64_t Hq = q.size(1), Nq = q.size(2), Nk = k.size(2);
  for (const at::Tensor* t : {&span, &period, &phase}) {
    TORCH_CHECK(t->numel() == 0 || (t->is_cuda() && t->scalar_type() == at::kFloat && t->dim() == 1 &&
                                    t->size(0) == Hq && t->is_contiguous()),
                op, ": span, period, phase must be contiguous float32 (Hq,) CUDA tensors (period/phase may be empty)");
  }
  TORCH_CHECK(span.numel() == Hq && (period.numel() == 0) == (phase.numel() == 0), op,
              ": span is required; period and phase come together");
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = at::zeros({q.size(0), Hq, Nq, v.size(3)}, q.options());
  auto lse = at::full({q.size(0), Hq, Nq}, std::numeric_limits<float>::infinity(), q.options().dtype(at::kFloat));
  at::Tensor idx, cnt;
  if (period.numel()) {
    auto ip = at::arange(Nq, q.options().dtype(at::kDouble)) + static_cast<double>(Nk - Nq);
    auto t = (ip.view({1, -1}) + phase.to(at::kDouble).view({-1, 1})) / period.to(at::kDouble).view({-1, 1});
    auto z = ((2 * (t - t.floor()) - 1).abs() - duty) / (1 - duty);
    auto active = z.clamp(0.0, 1.0).to(at::kFloat) > 0;
    cnt = active.sum(1).to(at::kInt).contiguous();
    idx = std::get<1>(at::sort((~active).to(at::kByte), /*stable=*/true, /*dim=*/1)).to(at::kInt).contiguous();
  }
  fastattn::cuda::SpanParams p{q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr<float>(),
                               span.data_ptr<float>(), period.numel() ? period.data_ptr<float>() : nullptr,
                               phase.numel() ? phase.data_ptr<float>() : nullptr,
                               idx.defined() ? idx.data_ptr<int32_t>() : nullptr,
                               cnt.defined() ? cnt.data_ptr<int32_t>() : nullptr, q.size(0), Hq, k.size(1), Nq, Nk,
                               q.size(3), v.size(3), static_cast<float>(ramp), static_cast<float>(duty), causal,
                               static_cast<float>(scale)};
  const int dtype = dt == at::kFloat ? 0 : (dt == at::kHalf ? 1 : 2);
  const cudaError_t err =
      fastattn::cuda::adaptive_span_attention_fwd_cuda(p, dtype, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": ", cudaGetErrorString(err));
  return {out, lse};
}
#endif

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
  m.impl("adaptive_span_attention_fwd", &fwd_cpu);
  m.impl("adaptive_span_attention_bwd", &bwd_cpu);
}

TORCH_LIBRARY_IMPL(fastattn_C, Meta, m) {
  m.impl("adaptive_span_attention_fwd", fastattn::meta_with_ragged<&fwd_meta>);
  m.impl("adaptive_span_attention_bwd", fastattn::meta_with_ragged<&bwd_meta>);
}

