// Torch-free CUDA forward of topk_attention, correctness-first (the fast GPU path is the Triton
// kernel). A query row's allowed keys are scored by warps striding over them (one warp per key: lanes
// split the head dim, so loads are coalesced); nothing of size Nk is stored.
//   1. tau: the K-th largest allowed score (repeats counted) by a 4-digit radix select over the
//      order-preserving uint32 image of the fp32 score: a 256-bin histogram per 8-bit digit, the
//      scores recomputed each pass; no limit on K. The K-th score is then lowered by the tie margin
//      (common/selection.h).
//   2. a softmax over the kept keys (s >= tau): an online softmax per warp, merged across warps.
// Many rows (prefill): one block per row does both in shared memory. Few rows (decoding): each
// row's keys are split over `splits` blocks: every digit pass is a launch whose blocks add their
// histograms into the row's global one (each block replays the digits found so far from it), the
// softmax pass writes per-split partials, and a last launch merges them.
#include "cuda/topk_attention.cuh"

#include <algorithm>

#include "common/online_softmax.h"
#include "cuda/warp_rows.cuh"

namespace fastattn::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kDigits = 4, kBins = 256;
constexpr int kMaxSplits = 64;
constexpr int64_t kMinKeysPerSplit = 1024;
enum : int { kAnyKey = 1, kNonFinite = 2 };  // flags of a softmax partial: it saw an allowed key / a non-finite value

struct KeyChunk {
  int64_t lo, hi;
};

// fp32 -> uint32 with a < b  <=>  key(a) < key(b) (for non-NaN a, b): negative floats get all bits
// flipped (larger magnitude -> smaller key), non-negative ones just the sign bit set.
__device__ __forceinline__ uint32_t order_key(float s) {
  const uint32_t u = __float_as_uint(s);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_float(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}
__device__ __forceinline__ int digit_shift(int pass) { return 24 - 8 * pass; }

// s_j = (scale * q) . k_j, lanes splitting the head dim; the butterfly sum leaves the same bits in
// every lane. Explicit fmaf: every inlined copy rounds identically, so the radix passes and the
// softmax pass see the same score for a key (a contraction choice differing per call site would
// make the histograms disagree).
template <typename T, int kSlots>
__device__ __forceinline__ float score(const float* qs, const T* krow, int D, int lane) {
  float dot = 0.0f;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int d = s * 32 + lane;
    if (d < D) dot = __fmaf_rn(qs[d], to_f(krow[d]), dot);
  }
  return warp_sum(dot);
}

// One query row's problem as the kernels see it.
struct TopkRow {
  Seq sq;
  int64_t h, hk, i;
  int64_t row;    // flat index in q / out / statistics
  int64_t limit;  // allowed keys are j < limit that exist
};

__device__ __forceinline__ TopkRow topk_row(const TopkParams& p, const GridTask& t, int64_t i) {
  const Seq sq = seq_at(p.d, p.r, t.s);
  return TopkRow{sq, t.h, t.h / (p.d.Hq / p.d.Hk), i, q_index(p.d, sq, t.h, i), causal_limit(sq, p.causal, i)};
}

// Shared state of a row's block: scale * q, a digit histogram, the selection found so far, and the
// per-warp softmax partials.
template <int kSlots>
struct TopkShared {
  float qs[kSlots * 32];
  uint32_t hist[kBins];
  uint32_t prefix, total;  // the K-th key's digits found so far; the allowed keys (see Selection)
  float w_max[kWarps], w_sum[kWarps];
  int w_flags[kWarps];  // bit 0: some allowed key, bit 1: a non-finite value read
  float w_acc[kWarps][kSlots * 32];
};

template <typename T, int kSlots>
__device__ __forceinline__ void load_q(TopkShared<kSlots>& sm, const TopkParams& p, const TopkRow& t) {
  const T* q = static_cast<const T*>(p.q) + t.row * p.d.D;
  for (int c = threadIdx.x; c < kSlots * 32; c += blockDim.x) sm.qs[c] = c < p.d.D ? to_f(q[c]) * p.scale : 0.0f;
}

// Block: adds to `hist` the digit at `shift` of the allowed keys j in lo .. hi whose higher digits are
// `prefix` (the bits of `fixed`).
template <typename T, int kSlots>
__device__ __forceinline__ void count_digits(uint32_t* hist, const TopkShared<kSlots>& sm, const TopkParams& p,
                                             const TopkRow& t, int64_t lo, int64_t hi, uint32_t prefix, int pass) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, shift = digit_shift(pass);
  const uint32_t fixed = pass == 0 ? 0u : (kFullMask << (shift + 8));
  const T* k = static_cast<const T*>(p.k) + kv_index(p.d, t.sq, t.hk, 0) * p.d.D;
  for (int64_t j = lo + warp; j < hi; j += kWarps) {
    if (!key_exists(p.d, p.r, t.sq, j)) continue;
    const uint32_t key = order_key(score<T, kSlots>(sm.qs, k + j * p.d.D, static_cast<int>(p.d.D), lane));
    if (lane == 0 && (key & fixed) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
  }
}

// Warp: the digit where the count of keys from the top digit down reaches kk, and kk minus the keys
// in higher digits (lane L owns digits 255 - 8L .. 248 - 8L; a scan of the lane totals finds the
// owner, which walks its 8 digits).
__device__ __forceinline__ void select_digit(const uint32_t* hist, uint32_t kk, int lane, uint32_t& digit,
                                             uint32_t& rest) {
  const int top = 255 - 8 * lane;
  uint32_t mine = 0u;
#pragma unroll
  for (int e = 0; e < 8; ++e) mine += hist[top - e];
  uint32_t incl = mine;  // keys in digits >= top - 7
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t n = __shfl_up_sync(kFullMask, incl, o);
    if (lane >= o) incl += n;
  }
  const unsigned hit = __ballot_sync(kFullMask, incl >= kk);
  const int owner = hit ? __ffs(static_cast<int>(hit)) - 1 : 31;  // hit == 0 cannot happen: guard
  uint32_t d = 0u, r = 0u;
  if (lane == owner) {
    uint32_t above = incl - mine;  // keys in higher digits
    int dg = top;
    while (dg > top - 7 && above + hist[dg] < kk) above += hist[dg--];
    d = static_cast<uint32_t>(dg);
    r = kk - above;
  }
  digit = __shfl_sync(kFullMask, d, owner);
  rest = __shfl_sync(kFullMask, r, owner);
}

__device__ __forceinline__ uint32_t clamp_k(int64_t k) { return k > 0xffffffffLL ? 0xffffffffu : static_cast<uint32_t>(k); }

// The selection in progress (warp-uniform registers of the warp that makes it): the K-th key's digits
// found so far, its rank among the keys with them, and the row's allowed keys (pass 0's total).
struct Selection {
  uint32_t prefix, kk, total;
};

// Warp: one digit pass of the selection, from that pass's histogram.
__device__ __forceinline__ void select_step(Selection& sel, const uint32_t* hist, int pass, uint32_t K, int lane) {
  if (pass == 0) {
    uint32_t total = 0u;
    for (int e = lane; e < kBins; e += 32) total += hist[e];
    for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(kFullMask, total, o);
    sel.total = total;
  }
  if (sel.total < K) return;  // fewer than K allowed keys: all are kept
  uint32_t digit;
  select_digit(hist, sel.kk, lane, digit, sel.kk);
  sel.prefix |= digit << digit_shift(pass);
}

// tau from a finished selection: the K-th largest allowed score lowered by the tie margin (exactly K
// allowed: their smallest), -inf with fewer than K allowed keys.
__device__ __forceinline__ float tau_of(uint32_t prefix, uint32_t total, uint32_t K) {
  return total >= K ? topk_with_margin(key_float(prefix)) : -INFINITY;
}

// Block: the softmax over the kept keys (s >= tau) among lo .. hi, one online softmax per warp, left
// in sm.w_* for merge_partials.
template <typename T, int kSlots>
__device__ __forceinline__ void attend(TopkShared<kSlots>& sm, const TopkParams& p, const TopkRow& t, int64_t lo,
                                       int64_t hi, float tau) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t kv0 = kv_index(p.d, t.sq, t.hk, 0);
  const T* k = static_cast<const T*>(p.k) + kv0 * p.d.D;
  const T* v = static_cast<const T*>(p.v) + kv0 * p.d.Dv;
  float acc[kSlots];
#pragma unroll
  for (int s = 0; s < kSlots; ++s) acc[s] = 0.0f;
  OnlineSoftmax st;
  bool any = false, bad = false;
  for (int64_t j = lo + warp; j < hi; j += kWarps) {
    if (!key_exists(p.d, p.r, t.sq, j)) continue;
    const float s_j = score<T, kSlots>(sm.qs, k + j * p.d.D, static_cast<int>(p.d.D), lane);
    any = true;
    note_finite(bad, s_j);  // every allowed key's: a non-finite k_j makes the row NaN
    if (!(s_j >= tau)) continue;  // warp-uniform: every lane holds the same sum
    const OnlineSoftmax::Step step = st.push(s_j);
    const T* vr = v + j * p.d.Dv;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int d = s * 32 + lane;
      const float x = d < p.d.Dv ? to_f(vr[d]) : 0.0f;
      note_finite(bad, x);
      acc[s] = acc[s] * step.rescale + step.weight * x;
    }
  }
  const bool nan_warp = __any_sync(kFullMask, bad);
  if (lane == 0) {
    sm.w_max[warp] = st.max;
    sm.w_sum[warp] = st.sum;
    sm.w_flags[warp] = (any ? kAnyKey : 0) | (nan_warp ? kNonFinite : 0);
  }
#pragma unroll
  for (int s = 0; s < kSlots; ++s) sm.w_acc[warp][s * 32 + lane] = acc[s];
}

// Merges n softmax partials w = (m_w, l_w, flags_w; acc_w): M = max m_w, L = sum l_w e^(m_w - M),
// o = sum acc_w e^(m_w - M) / L (partials that kept nothing, l_w = 0, are skipped). The block's
// threads split the Dv outputs: emit(d, o_d, merged).
struct Partial {
  float m, l;
  int flags;
};
struct Merged {
  float M, L;
  int flags;
  __device__ __forceinline__ bool nan_row() const { return (flags & kAnyKey) && (flags & kNonFinite); }
  __device__ __forceinline__ float lse() const { return nan_row() ? NAN : (L > 0.0f ? M + __logf(L) : INFINITY); }
};
template <typename Part, typename Acc, typename Emit>
__device__ __forceinline__ Merged merge_partials(int n, int64_t Dv, Part part, Acc acc, Emit emit) {
  Merged r{-INFINITY, 0.0f, 0};
  for (int w = 0; w < n; ++w) {
    const Partial x = part(w);
    r.flags |= x.flags;
    if (x.l > 0.0f) r.M = fmaxf(r.M, x.m);
  }
  for (int w = 0; w < n; ++w) {
    const Partial x = part(w);
    if (x.l > 0.0f) r.L += x.l * __expf(x.m - r.M);
  }
  for (int64_t d = threadIdx.x; d < Dv; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < n; ++w) {
      const Partial x = part(w);
      if (x.l > 0.0f) o += acc(w, d) * __expf(x.m - r.M);
    }
    emit(d, r.L > 0.0f ? o / r.L : 0.0f, r);
  }
  return r;
}

// The warps' partials of `attend`, merged by the block: emit(d, o_d, merged) for the Dv outputs.
template <int kSlots, typename Emit>
__device__ __forceinline__ Merged merge_warps(const TopkShared<kSlots>& sm, int64_t Dv, Emit&& emit) {
  return merge_partials(
      kWarps, Dv, [&](int w) { return Partial{sm.w_max[w], sm.w_sum[w], sm.w_flags[w]}; },
      [&](int w, int64_t d) { return sm.w_acc[w][d]; }, emit);
}

// ... into the row's output (zeros with no allowed key, all-NaN on NaN rows); returns the merge
// (lse, flags) for thread 0 to store.
template <typename T, int kSlots>
__device__ __forceinline__ Merged finish_row(const TopkShared<kSlots>& sm, const TopkParams& p, const TopkRow& t) {
  T* out = static_cast<T*>(p.out) + t.row * p.d.Dv;
  return merge_warps(sm, p.d.Dv, [&](int64_t d, float o, const Merged& m) { out[d] = from_f<T>(m.nan_row() ? NAN : o); });
}

// ---- many rows: one block per row ----------------------------------------------------------------

template <typename T, int kSlots>
__global__ void __launch_bounds__(kWarps * 32, 4) topk_fwd_kernel(TopkParams p, int64_t n_tiles) {
  __shared__ TopkShared<kSlots> sm;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint32_t K = clamp_k(p.topk);
  const GridTask task = grid_task(p.d.Hq, n_tiles);
  const Seq sq = seq_at(p.d, p.r, task.s);
  for (int64_t i = task.tile; i < sq.nq; i += task.n_tiles) {
    const TopkRow t = topk_row(p, task, i);
    __syncthreads();  // the previous row's readers of sm are done
    load_q<T, kSlots>(sm, p, t);
    if (threadIdx.x == 0) sm.prefix = 0u;
    Selection sel{0u, K, 0u};  // warp 0's
    // 1. tau: digits from the most significant; pass 0 also counts the allowed keys.
    for (int pass = 0; pass < kDigits; ++pass) {
      for (int e = threadIdx.x; e < kBins; e += blockDim.x) sm.hist[e] = 0u;
      __syncthreads();
      count_digits<T, kSlots>(sm.hist, sm, p, t, 0, t.limit, sm.prefix, pass);
      __syncthreads();
      if (warp == 0) {
        select_step(sel, sm.hist, pass, K, lane);
        if (lane == 0) {
          sm.prefix = sel.prefix;
          sm.total = sel.total;
        }
      }
      __syncthreads();
      if (sm.total < K) break;  // block-uniform
    }
    const float tau = tau_of(sm.prefix, sm.total, K);
    // 2. softmax over the kept keys.
    attend<T, kSlots>(sm, p, t, 0, t.limit, tau);
    __syncthreads();
    const Merged m = finish_row<T, kSlots>(sm, p, t);
    if (threadIdx.x == 0) {
      p.lse[t.row] = m.lse();
      p.tau[t.row] = tau;
    }
  }
}

// ---- few rows (decoding): each row's keys split over `splits` blocks -------------------------------

// The scratch of the split path: per row the digit histograms, per (row, split) a softmax partial.
struct SplitScratch {
  uint32_t* hist;  // (rows, kDigits, kBins), zeroed before the first pass
  float* ml;       // (rows, splits, 2): the partial's max and sum
  int* flags;      // (rows, splits)
  float* acc;      // (rows, splits, Dv): the partial's normalized output
  static size_t bytes(int64_t rows, int64_t splits, int64_t Dv) {
    return static_cast<size_t>(rows) * (kDigits * kBins * sizeof(uint32_t) +
                                        splits * (2 * sizeof(float) + sizeof(int) + Dv * sizeof(float)));
  }
  static SplitScratch at(void* base, int64_t rows, int64_t splits, int64_t Dv) {
    char* c = static_cast<char*>(base);
    SplitScratch s;
    s.hist = reinterpret_cast<uint32_t*>(c);
    s.ml = reinterpret_cast<float*>(c + rows * kDigits * kBins * sizeof(uint32_t));
    s.flags = reinterpret_cast<int*>(s.ml + rows * splits * 2);
    s.acc = reinterpret_cast<float*>(s.flags + rows * splits);
    return s;
  }
};

// Block (row, split) of a grid of (sequence, head, row) x splits blocks: its keys are the split-th
// of `splits` equal chunks of the row's allowed range.
struct SplitTask {
  GridTask task;
  int64_t split;
};
__device__ __forceinline__ SplitTask split_task(const TopkParams& p, int64_t n_tiles, int64_t splits) {
  return SplitTask{grid_task(p.d.Hq, n_tiles, static_cast<int64_t>(blockIdx.x) / splits),
                   static_cast<int64_t>(blockIdx.x) % splits};
}
__device__ __forceinline__ KeyChunk split_keys(const TopkRow& t, int64_t split, int64_t splits) {
  const int64_t chunk = (t.limit + splits - 1) / splits, lo = imin(split * chunk, t.limit);
  return KeyChunk{lo, imin(lo + chunk, t.limit)};
}

// Warp 0: the selection after `passes` passes, replayed from the row's global histograms, to smem.
template <int kSlots>
__device__ __forceinline__ void replay(TopkShared<kSlots>& sm, const uint32_t* hist, int passes, uint32_t K) {
  const int lane = threadIdx.x & 31;
  Selection sel{0u, K, K};  // (total = K: "enough" until pass 0 counts them)
  for (int pass = 0; pass < passes && sel.total >= K; ++pass) select_step(sel, hist + pass * kBins, pass, K, lane);
  if (lane == 0) {
    sm.prefix = sel.prefix;
    sm.total = sel.total;
  }
}

// The rows of a split kernel's block, each with q staged, sm.hist zeroed and the selection after
// `passes` digit passes replayed into sm: body(row, its key chunk, split).
template <typename T, int kSlots, typename Body>
__device__ __forceinline__ void for_each_split_row(TopkShared<kSlots>& sm, const TopkParams& p, int64_t n_tiles,
                                                   int64_t splits, const SplitScratch& sc, int passes, Body&& body) {
  const SplitTask st = split_task(p, n_tiles, splits);
  const Seq sq = seq_at(p.d, p.r, st.task.s);
  for (int64_t i = st.task.tile; i < sq.nq; i += st.task.n_tiles) {
    const TopkRow t = topk_row(p, st.task, i);
    __syncthreads();  // the previous row's readers of sm are done
    load_q<T, kSlots>(sm, p, t);
    if ((threadIdx.x >> 5) == 0) replay(sm, sc.hist + t.row * kDigits * kBins, passes, clamp_k(p.topk));
    for (int e = threadIdx.x; e < kBins; e += blockDim.x) sm.hist[e] = 0u;
    __syncthreads();
    body(t, split_keys(t, st.split, splits), st.split);
  }
}

template <typename T, int kSlots>
__global__ void __launch_bounds__(kWarps * 32, 4) topk_split_count_kernel(TopkParams p, int64_t n_tiles,
                                                                          int64_t splits, int pass, SplitScratch sc) {
  __shared__ TopkShared<kSlots> sm;
  for_each_split_row<T, kSlots>(sm, p, n_tiles, splits, sc, pass, [&](const TopkRow& t, KeyChunk keys, int64_t) {
    if (sm.total < clamp_k(p.topk)) return;  // fewer than K allowed keys: nothing to select (block-uniform)
    count_digits<T, kSlots>(sm.hist, sm, p, t, keys.lo, keys.hi, sm.prefix, pass);
    __syncthreads();
    uint32_t* hist = sc.hist + (t.row * kDigits + pass) * kBins;
    for (int e = threadIdx.x; e < kBins; e += blockDim.x) {
      if (sm.hist[e]) atomicAdd(&hist[e], sm.hist[e]);
    }
  });
}

template <typename T, int kSlots>
__global__ void __launch_bounds__(kWarps * 32, 4) topk_split_attend_kernel(TopkParams p, int64_t n_tiles,
                                                                           int64_t splits, SplitScratch sc) {
  __shared__ TopkShared<kSlots> sm;
  for_each_split_row<T, kSlots>(sm, p, n_tiles, splits, sc, kDigits, [&](const TopkRow& t, KeyChunk keys,
                                                                          int64_t split) {
    const float tau = tau_of(sm.prefix, sm.total, clamp_k(p.topk));
    attend<T, kSlots>(sm, p, t, keys.lo, keys.hi, tau);
    __syncthreads();
    const int64_t part = t.row * splits + split;
    float* acc = sc.acc + part * p.d.Dv;
    const Merged m = merge_warps(sm, p.d.Dv, [&](int64_t d, float o, const Merged&) { acc[d] = o; });
    if (threadIdx.x == 0) {
      sc.ml[2 * part] = m.M;
      sc.ml[2 * part + 1] = m.L;
      sc.flags[part] = m.flags;
      if (split == 0) p.tau[t.row] = tau;
    }
  });
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32) topk_split_merge_kernel(TopkParams p, int64_t n_tiles, int64_t splits,
                                                                       SplitScratch sc) {
  const GridTask task = grid_task(p.d.Hq, n_tiles);
  const Seq sq = seq_at(p.d, p.r, task.s);
  for (int64_t i = task.tile; i < sq.nq; i += task.n_tiles) {
    const TopkRow t = topk_row(p, task, i);
    const int64_t part0 = t.row * splits;
    T* out = static_cast<T*>(p.out) + t.row * p.d.Dv;
    const Merged m = merge_partials(
        static_cast<int>(splits), p.d.Dv,
        [&](int w) { return Partial{sc.ml[2 * (part0 + w)], sc.ml[2 * (part0 + w) + 1], sc.flags[part0 + w]}; },
        [&](int w, int64_t d) { return sc.acc[(part0 + w) * p.d.Dv + d] * sc.ml[2 * (part0 + w) + 1]; },
        [&](int64_t d, float o, const Merged& mm) { out[d] = from_f<T>(mm.nan_row() ? NAN : o); });
    if (threadIdx.x == 0) p.lse[t.row] = m.lse();
  }
}

// Key splits per row: enough (row, split) blocks for about two per SM when the rows alone are too
// few, each split at least kMinKeysPerSplit keys; 1 = one block per row.
int64_t splits_for(const TopkParams& p) {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    cudaGetLastError();  // clear it: the launch path reports its own errors
    return 1;
  }
  const int64_t rows = p.d.B * p.d.Hq * p.d.Nq, target = 2 * static_cast<int64_t>(sms);
  const int64_t nk = p.r.cu_seqlens_q != nullptr && p.r.max_seqlen_k > 0 ? std::min(p.r.max_seqlen_k, p.d.Nk) : p.d.Nk;
  if (rows == 0 || rows >= target || nk < 2 * kMinKeysPerSplit) return 1;
  const int64_t s = std::min<int64_t>(kMaxSplits, std::min(ceil_div(target, rows), nk / kMinKeysPerSplit));
  return s > 1 ? s : 1;
}

}  // namespace

size_t topk_attention_fwd_scratch(const TopkParams& p) {
  if (!valid_shape(p.d, p.r) || p.topk < 1) return 0;
  const int64_t splits = splits_for(p);
  return splits > 1 ? SplitScratch::bytes(p.d.B * p.d.Hq * p.d.Nq, splits, p.d.Dv) : 0;
}

cudaError_t topk_attention_fwd_cuda(const TopkParams& p, int dtype, cudaStream_t stream) {
  if (p.topk < 1) return cudaErrorInvalidValue;
  const int64_t splits = splits_for(p);
  if (splits > 1 && p.scratch == nullptr) return cudaErrorInvalidValue;
  // Grids of one block per row (Nk == 0 runs too: every row writes zeros, lse = +inf, tau = -inf).
  return launch_rows<1>(dtype, p.d, p.r, [&](auto tag, auto slots, const Grid& rows) {
    using T = decltype(tag);
    constexpr int S = decltype(slots)::value;
    constexpr unsigned threads = kWarps * 32;
    if (splits == 1) {
      topk_fwd_kernel<T, S><<<rows.dim(), threads, 0, stream>>>(p, rows.tiles);
      return cudaSuccess;
    }
    if (rows.blocks * splits > 0x7fffffff) return cudaErrorInvalidConfiguration;
    const int64_t n = p.d.B * p.d.Hq * p.d.Nq;
    const SplitScratch sc = SplitScratch::at(p.scratch, n, splits, p.d.Dv);
    const cudaError_t err = cudaMemsetAsync(sc.hist, 0, n * kDigits * kBins * sizeof(uint32_t), stream);
    if (err != cudaSuccess) return err;
    const unsigned blocks = static_cast<unsigned>(rows.blocks * splits);
    for (int pass = 0; pass < kDigits; ++pass) {
      topk_split_count_kernel<T, S><<<blocks, threads, 0, stream>>>(p, rows.tiles, splits, pass, sc);
    }
    topk_split_attend_kernel<T, S><<<blocks, threads, 0, stream>>>(p, rows.tiles, splits, sc);
    topk_split_merge_kernel<T><<<rows.dim(), threads, 0, stream>>>(p, rows.tiles, splits, sc);
    return cudaSuccess;
  });
}

}  // namespace fastattn::cuda
