// Torch-free CUDA adaptive_span_attention, correctness-first (the fast GPU path is the Triton kernel,
// kernels/adaptive_span_attention.py). The plan (cuda/adaptive_span_plan.cuh) compacts each head's
// active query rows (g > 0), so gated-off queries cost nothing; blocks of kWarps consecutive active
// rows visit only the keys within reach of their first .. last row, so the cost is
// (active rows) x (span + R + tile). The span factor m enters the softmax as s + log m.
// Backward (fp32 accumulation, no Nq x Nk buffer, no atomics), with P~ = m exp(s - lse), the row's
// gate g, delta_i = dO_i . O_i and T = g dP - delta:
//   dq:   one warp per active row: dS = P~ T, dq += scale dS k; the row's dL/dg = sum_j P~ dP, and its
//         share of dL/dspan, sum of exp(s - lse) T over the ramp keys (m < 1, where m grows with span);
//   dkdv: key-owning blocks (cuda/key_blocks.cuh) over the rows within reach: dv += g P~ dO, dk += dS (scale q);
//   one block per head reduces dL/dspan and, through the gate's derivative, dL/dperiod and dL/dphase.
#include "cuda/adaptive_span_attention.cuh"

#include "cuda/adaptive_span_plan.cuh"
#include "cuda/key_blocks.cuh"

namespace fastattn::cuda {
namespace {

constexpr int kWarps = 4;  // rows per block (forward, dq)
constexpr int kReduceThreads = 256;

template <typename T, int kSlots, int kTileN = tile_keys<kSlots>()>
__global__ void __launch_bounds__(kWarps * 32, 4) span_fwd_kernel(SpanParams p, int64_t n_tiles) {
  __shared__ KVTile<kSlots, kTileN> sm;
  const int lane = threadIdx.x & 31;
  for_each_active_row<kWarps>(p, n_tiles, [&](const ActiveRow& w) {
    const SpanHead sh = span_head(p.span, p.ramp, w.h, w.sq);
    float qr[kSlots];
    load_row<T, kSlots>(qr, row_ptr<T>(p.q, w.row, p.d.D), w.ok ? p.d.D : 0, p.scale, lane);
    SoftmaxRow<kSlots> row;
    for_each_span_key<T, kSlots, kTileN>(sm, p, w, sh, [&](int64_t, float m, const float* kr, const float* vr) {
      row.add(row_dot<kSlots>(qr, kr, lane) + (m < 1.0f ? __logf(m) : 0.0f), vr, lane);
    });
    if (w.ok) row.store(static_cast<T*>(p.out) + w.row * p.d.Dv, p.lse + w.row, p.d.Dv, w.g, lane);
  });
}

template <typename T, int kSlots, int kTileN = tile_keys<kSlots>()>
__global__ void __launch_bounds__(kWarps * 32, 4) span_bwd_dq_kernel(SpanBwdParams p, int64_t n_tiles) {
  __shared__ KVTile<kSlots, kTileN> sm;
  const int lane = threadIdx.x & 31;
  const Shape& d = p.d;
  for_each_active_row<kWarps>(p, n_tiles, [&](const ActiveRow& w) {
    const SpanHead sh = span_head(p.span, p.ramp, w.h, w.sq);
    const int64_t ip = w.i + w.sq.offset();
    GradRow<T, kSlots> g(p.q, p.dout, p.out, d, w.row, w.ok, p.scale, lane);
    const float L = w.ok ? p.lse[w.row] : INFINITY;
    float dg = 0.0f, dspan = 0.0f;
    for_each_span_key<T, kSlots, kTileN>(sm, p, w, sh, [&](int64_t j, float m, const float* kr, const float* vr) {
      const float e = __expf(row_dot<kSlots>(g.q, kr, lane) - L), dp = row_dot<kSlots>(g.dout, vr, lane);
      const float t = w.g * dp - g.delta;
      axpy_row<kSlots>(g.dq, m * e * t, kr, lane);
      dg += m * e * dp;
      const int64_t x = ip - j;
      if (span_ramp_raw(sh.A, sh.R, x < 0 ? -x : x) <= 1.0f) dspan += e * t;  // on the ramp: dm/dspan = 1/R
    });
    if (!w.ok) return;
    save_row<T, kSlots>(static_cast<T*>(p.dq) + w.row * d.D, g.dq, p.scale, d.D, lane);
    if (lane == 0) {
      p.delta[w.row] = g.delta;
      p.dg[w.row] = dg;
      p.dspan_rows[w.row] = dspan;
    }
  });
}

template <typename T, int kSlots>
__global__ void __launch_bounds__(kWarpsKV * 32, 2) span_bwd_dkdv_kernel(SpanBwdParams p, int64_t n_tiles) {
  enum { kL, kDelta, kGate, kVals };
  key_blocks<T, kSlots, kVals>(  // q staged times scale: dk += dS (scale q)
      p, p.scale, n_tiles,
      [&](const Seq& sq, int64_t h, int64_t j0, int64_t j_end) {  // rows with 0 <= i' - j <= reach (|.| bidirectional)
        const int64_t reach = span_head(p.span, p.ramp, h, sq).reach;
        return RowRange{iclamp((p.causal ? j0 : j0 - reach) - sq.offset(), 0, sq.nq),
                        iclamp(j_end - 1 + reach - sq.offset() + 1, 0, sq.nq)};
      },
      [&](const Seq& sq, int64_t h, int64_t row, int64_t i, float* val) {
        val[kL] = p.lse[row];
        val[kDelta] = p.delta[row];
        val[kGate] = p.period ? span_gate(i + sq.offset(), p.phase[h], p.period[h], p.duty).g : 1.0f;
      },
      [&](const KeyPair<kSlots>& e, float& P, float& dS) {
        const float g = e.val[kGate];
        const int64_t x = e.dist();
        if (g <= 0.0f || (p.causal && x < 0)) return false;  // gated-off row (not computed), or a future key
        const float m = span_head(p.span, p.ramp, e.h, e.sq).m(x);
        if (m <= 0.0f) return false;
        const float pt = m * __expf(e.qk() - e.val[kL]);
        dS = pt * (g * e.dp() - e.val[kDelta]);
        P = pt * g;
        return true;
      });
}

// Block h: dL/dspan_h = sum_rows dspan_rows / R, and with a gate dL/dphase_h, dL/dperiod_h from the
// rows' dL/dg through the gate's derivative (common/selection.h), summed in fp64.
__global__ void __launch_bounds__(kReduceThreads) span_param_grads_kernel(SpanBwdParams p) {
  __shared__ double part[3][kReduceThreads / 32];
  const Shape& d = p.d;
  const int64_t h = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  double sums[3] = {0.0, 0.0, 0.0};  // dspan * R, dphase, dperiod
  for (int64_t s = 0; s < p.r.num_seqs; ++s) {
    const Seq sq = seq_at(d, p.r, s);
    for (int64_t i = threadIdx.x; i < sq.nq; i += blockDim.x) {
      const int64_t row = q_index(d, sq, h, i);
      sums[0] += p.dspan_rows[row];
      if (p.period) {
        const SpanGate gate = span_gate(i + sq.offset(), p.phase[h], p.period[h], p.duty);
        span_gate_grads(gate, p.period[h], p.dg[row], &sums[1], &sums[2]);
      }
    }
  }
  for (int c = 0; c < 3; ++c) {
    const double x = warp_sum(sums[c]);
    if (lane == 0) part[c][warp] = x;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int c = 0; c < 3; ++c) {
    sums[c] = 0.0;
    for (int w = 0; w < kReduceThreads / 32; ++w) sums[c] += part[c][w];
  }
  p.dspan[h] = static_cast<float>(sums[0] / p.ramp);
  if (p.period) {
    p.dphase[h] = static_cast<float>(sums[1]);
    p.dperiod[h] = static_cast<float>(sums[2]);
  }
}

template <typename P>
bool valid_span(const P& p) {
  return valid_shape(p.d, p.r) && p.ramp > 0.0f && p.duty >= 0.0f && p.duty < 1.0f &&
         (p.period == nullptr) == (p.phase == nullptr) && (p.period == nullptr || p.plan.idx && p.plan.cnt);
}

}  // namespace

cudaError_t adaptive_span_attention_fwd_cuda(const SpanParams& p, int dtype, cudaStream_t stream) {
  if (!valid_span(p)) return cudaErrorInvalidValue;
  if (p.d.Nk == 0) return cudaSuccess;  // every row: zeros, lse = +inf (the caller's fill)
  return launch_rows<kWarps>(dtype, p.d, p.r, [&](auto tag, auto slots, const Grid& rows) {
    const cudaError_t err = launch_span_plan(p.d, p.r, p.period, p.phase, p.duty, p.plan, stream);
    if (err == cudaSuccess) {
      span_fwd_kernel<decltype(tag), decltype(slots)::value><<<rows.dim(), kWarps * 32, 0, stream>>>(p, rows.tiles);
    }
    return err;
  });
}

cudaError_t adaptive_span_attention_bwd_cuda(const SpanBwdParams& p, int dtype, cudaStream_t stream) {
  if (!valid_span(p) || p.dspan == nullptr || (p.period != nullptr && (!p.dperiod || !p.dphase))) {
    return cudaErrorInvalidValue;
  }
  if (p.d.Nk == 0 || p.d.Hq == 0) return cudaSuccess;  // zero gradients (the caller's fill)
  cudaError_t err = launch_span_plan(p.d, p.r, p.period, p.phase, p.duty, p.plan, stream);
  if (err == cudaSuccess) {
    err = launch_backward<kWarps>(dtype, p, stream, [](auto tag, auto slots) {
      using T = decltype(tag);
      constexpr int S = decltype(slots)::value;
      return BwdKernels<SpanBwdParams>{span_bwd_dq_kernel<T, S>, span_bwd_dkdv_kernel<T, S>};
    });
  }
  if (err != cudaSuccess) return err;
  span_param_grads_kernel<<<static_cast<unsigned>(p.d.Hq), kReduceThreads, 0, stream>>>(p);  // (zeros with no rows)
  return cudaGetLastError();
}

}  // namespace fastattn::cuda
