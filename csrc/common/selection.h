// Which keys a query row keeps, and with what weight, beyond causal masking: math the CPU and CUDA
// kernels share, written once for host and device code.
//   - top-K (docs/semantics.md §3): the tie margin that lowers the K-th score to the threshold tau;
//   - adaptive span (docs/semantics.md §4): the ramp m(x) = clamp((A - x) / R, 0, 1) with A = fp32(R + span_h),
//     and the triangle-wave query gate g(i') with its derivative (for the period/phase gradients).
// The Python side (reference, Triton) has its own single definition of each: fastattn/ops and kernels/.
#pragma once

#include <math.h>
#include <stdint.h>

#include "common/limits.h"
#include "common/macros.h"

namespace fastattn {

// tau = the K-th largest score t lowered by kTieMargin * max(1, |t|) (common/limits.h), so the key
// defining it survives when a kernel recomputes its score with another summation order.
FASTATTN_HOST_DEVICE float topk_with_margin(float t) {
#if defined(__CUDA_ARCH__)
  const float margin = __fmul_rn(kTieMargin, fmaxf(1.0f, fabsf(t)));  // never contracted into an fma
#else
  const float margin = kTieMargin * fmaxf(1.0f, fabsf(t));
#endif
  return t == -INFINITY ? t : t - margin;
}

// The ramp value (A - x) / R before clamping, IEEE fp32 on host and device alike.
FASTATTN_HOST_DEVICE float span_ramp_raw(float A, float R, int64_t x) { return div_rn(A - static_cast<float>(x), R); }

// m(x) = clamp((A - x) / R, 0, 1): the weight of a key at distance x (keys with m = 0 are dropped).
FASTATTN_HOST_DEVICE float span_ramp(float A, float R, int64_t x) {
  const float raw = span_ramp_raw(A, R, x);
  return raw <= 0.0f ? 0.0f : (raw >= 1.0f ? 1.0f : raw);
}

// Keys with m > 0 have distance x <= span_reach(A, Nq + Nk + 1) (A capped so the cast stays in range).
FASTATTN_HOST_DEVICE int64_t span_reach(float A, int64_t cap) {
  const float a = A < static_cast<float>(cap) ? A : static_cast<float>(cap);
  return static_cast<int64_t>(floorf(a));
}

struct SpanGate {
  float g;       // clamp(z, 0, 1): the row's output multiplier (0: the row is not computed)
  double slope;  // dg/dt where z > 0, else 0
  double t;      // (i' + phase) / period
};

// The triangle-wave gate of absolute query position i' (SPEC §4), in fp64, term by term as the
// contract computes it: t = (i' + phase) / period, u = 2 (t - floor t) - 1,
// z = (|u| - duty) / (1 - duty), g = clamp(z, 0, 1).
FASTATTN_HOST_DEVICE SpanGate span_gate(int64_t ip, double phase, double period, double duty) {
  const double t = (static_cast<double>(ip) + phase) / period;
  const double u = 2.0 * (t - floor(t)) - 1.0;
  const double z = (fabs(u) - duty) / (1.0 - duty);
  const double sign = static_cast<double>((u > 0.0) - (u < 0.0));
  return {static_cast<float>(z < 0.0 ? 0.0 : (z > 1.0 ? 1.0 : z)), z > 0.0 ? 2.0 * sign / (1.0 - duty) : 0.0, t};
}

// One row's share of the period and phase gradients, given dL/dg of that row:
// dL/dphase += dg * g'(t) / period, dL/dperiod += dg * g'(t) * (-t / period).
FASTATTN_HOST_DEVICE void span_gate_grads(const SpanGate& gate, double period, double dg, double* dphase,
                                          double* dperiod) {
  const double d = dg * gate.slope / period;
  *dphase += d;
  *dperiod -= d * gate.t;
}

}  // namespace fastattn
