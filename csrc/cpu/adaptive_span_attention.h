// Fused, tiled CPU adaptive-span attention with the periodic query gate (docs/semantics.md §4), forward and
// backward. The kernel-level contract (arguments, math, skipping plan) is written once, in
// fastattn/ops/adaptive_span_attention.py; absent period/phase are EMPTY fp32 tensors here.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "cpu/varlen.h"

namespace fastattn::cpu {

// -> out (B, Hq, Nq, Dv) gated, in q's dtype; lse (B, Hq, Nq) fp32, ungated (+inf where g = 0 or
// the row has no key with m > 0).
std::tuple<at::Tensor, at::Tensor> adaptive_span_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                   const at::Tensor& v, const at::Tensor& span,
                                                                   const at::Tensor& period, const at::Tensor& phase,
                                                                   double ramp, double duty, bool causal,
                                                                   double scale, const RaggedArgs& ra = {});

// -> dq, dk, dv like q, k, v; dspan (Hq,) fp32; dperiod, dphase (Hq,) fp32, or (0,) without period.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> adaptive_span_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& span, const at::Tensor& period, const at::Tensor& phase, double ramp,
    double duty, bool causal, double scale, const RaggedArgs& ra = {});

}  // namespace fastattn::cpu
