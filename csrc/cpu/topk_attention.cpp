// Top-K threshold on the CPU: see topk_attention.h.
//
// Selection: per query row a candidate buffer holding at most 2K values >= the current threshold t.
// A score enters only if it beats t (16 at a time with AVX-512: compare, compress-store the hits); when the buffer fills, nth_element keeps its K largest and t
// becomes the K-th of them (a new score equal to t cannot change the K-th largest). Amortized O(1)
// per score on top of the tile GEMM that produces the scores; memory O(K) per row.
// Key splitting: with few (batch, head, query-tile) tasks (decoding), the keys are split so every
// thread has work; each split returns its candidates (its own K largest) and a merge selects the
// K-th largest of their union, which is the K-th largest overall.
#include "cpu/topk_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <vector>

#include "common/relu.h"
#include "common/selection.h"
#include "cpu/attention_common.h"
#include "cpu/gemv.h"
#include "cpu/varlen.h"

namespace fastattn::cpu {
namespace {

constexpr int64_t kBM = 64, kBN = 256;
// tau = topk_with_margin(K-th score) (common/selection.h). Keys that close to tau are the near-ties
// docs/semantics.md §3 lets backends select differently.
constexpr float kMaxFinite = std::numeric_limits<float>::max();

// The k-th largest (1-based) of a[0, n), n >= k >= 1, by quickselect with branch-free AVX-512
// partitions (compress-store of the > pivot and < pivot lanes): on random scores std::nth_element
// spends most of its time in mispredicted branches. `a` and the two buffers (n floats each) are
// scratch and get overwritten.
inline float kth_largest(float* a, int64_t n, int64_t k, float* buf0, float* buf1) {
#ifdef __AVX512F__
  float* spare[2] = {buf0, buf1};
  while (n > 64) {
    float p0 = a[0], p1 = a[n / 2], p2 = a[n - 1];  // median of three
    if (p0 > p1) std::swap(p0, p1);
    if (p1 > p2) std::swap(p1, p2);
    if (p0 > p1) std::swap(p0, p1);
    const float pivot = p1;
    float* gt = spare[0];
    float* lt = spare[1];
    int64_t ngt = 0, nlt = 0, c = 0;
    const __m512 pv = _mm512_set1_ps(pivot);
    for (; c + 16 <= n; c += 16) {
      const __m512 x = _mm512_loadu_ps(a + c);
      const __mmask16 mg = _mm512_cmp_ps_mask(x, pv, _CMP_GT_OQ), ml = _mm512_cmp_ps_mask(x, pv, _CMP_LT_OQ);
      _mm512_mask_compressstoreu_ps(gt + ngt, mg, x);
      _mm512_mask_compressstoreu_ps(lt + nlt, ml, x);
      ngt += __builtin_popcount(mg);
      nlt += __builtin_popcount(ml);
    }
    for (; c < n; ++c) {
      if (a[c] > pivot) gt[ngt++] = a[c];
      else if (a[c] < pivot) lt[nlt++] = a[c];
    }
    const int64_t neq = n - ngt - nlt;
    if (k <= ngt) {
      spare[0] = a;
      a = gt;
      n = ngt;
    } else if (k <= ngt + neq) {
      return pivot;
    } else {
      k -= ngt + neq;
      spare[1] = a;
      a = lt;
      n = nlt;
    }
  }
#else
  (void)buf0;
  (void)buf1;
#endif
  std::nth_element(a, a + (k - 1), a + n, std::greater<float>());
  return a[k - 1];
}

// Per query row: the candidates (score, key index) at or above the admission threshold
// topk_with_margin(t), t = the K-th largest score once K are known. Invariant: every key with a
// score >= topk_with_margin(final K-th) is held (t only grows, and shrinking keeps everything
// >= topk_with_margin(t)), so at the end the held keys ARE the selection {j : s_j >= tau},
// near-ties included.
struct RowTopK {
  int64_t K;
  float t = -kInf;           // K-th largest seen (-inf until the first shrink)
  float adm = -kMaxFinite;   // admission: s >= adm (-FLT_MAX admits every allowed key, never -inf)
  int64_t allowed = 0, n = 0, trigger;
  bool poisoned = false;     // an allowed score was not finite: the row is NaN (CONTRACTS §2)
  std::vector<float> val;
  std::vector<int32_t> idx;
  explicit RowTopK(int64_t k) : K(k), trigger(2 * k) {}  // storage is allocated on first use

  // Start a new row, keeping the storage.
  void reset() {
    t = -kInf;
    adm = -kMaxFinite;
    allowed = n = 0;
    trigger = 2 * K;
    poisoned = false;
  }
  void reserve_for_append() {
    if (n + 16 > static_cast<int64_t>(val.size())) {
      const int64_t cap = std::max<int64_t>(2 * K + 16, 2 * (n + 16));
      val.resize(cap);
      idx.resize(cap);
    }
  }
  // t <- K-th largest held value (needs n >= K); keep only values >= topk_with_margin(t).
  void shrink() {
    thread_local std::vector<float> scratch;  // 3 x n floats for kth_largest
    if (static_cast<int64_t>(scratch.size()) < 3 * n) scratch.resize(3 * n);
    std::copy(val.begin(), val.begin() + n, scratch.begin());
    t = std::max(t, kth_largest(scratch.data(), n, K, scratch.data() + n, scratch.data() + 2 * n));
    adm = topk_with_margin(t);
    int64_t m = 0;
    for (int64_t c = 0; c < n; ++c) {
      if (val[c] >= adm) {
        val[m] = val[c];
        idx[m++] = idx[c];
      }
    }
    n = m;
    trigger = std::max<int64_t>(2 * K, 2 * n);  // many near-ties: grow instead of re-shrinking
  }
  void add(float x, int32_t j) {
    reserve_for_append();
    val[n] = x;
    idx[n++] = j;
  }
  // One tile row of `cols` scores for keys j0.. (masked ones are -inf and never admitted).
  void push_row(const float* s, int64_t cols, int64_t n_allowed, int64_t j0) {
    allowed += n_allowed;
    int64_t c = 0;
#ifdef __AVX512F__
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (; c + 16 <= cols; c += 16) {
      const __m512 x = _mm512_loadu_ps(s + c);
      const __mmask16 hit = _mm512_cmp_ps_mask(x, _mm512_set1_ps(adm), _CMP_GE_OQ);
      if (hit == 0) continue;
      reserve_for_append();
      _mm512_mask_compressstoreu_ps(val.data() + n, hit, x);
      _mm512_mask_compressstoreu_epi32(idx.data() + n, hit,
                                       _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int32_t>(j0 + c))));
      n += __builtin_popcount(hit);
      if (n >= trigger) shrink();
    }
#endif
    for (; c < cols; ++c) {
      if (s[c] >= adm) {
        add(s[c], static_cast<int32_t>(j0 + c));
        if (n >= trigger) shrink();
      }
    }
  }
  // Final selection: tau (-inf when fewer than K keys are allowed: all of them are kept; NaN for a
  // poisoned row).
  float finish() {
    if (poisoned) return kNaN;
    if (allowed < K) return -kInf;
    if (n > K || t == -kInf) shrink();
    return adm;
  }
};

// Softmax over one row's kept keys (their scores from the selection GEMM): out = sum p_j v_j,
// returns lse (+inf when nothing is kept).
template <typename T>
float attend_row(const RowTopK& rs, const T* vh, int64_t Dv, float* acc, T* out) {
  std::fill(acc, acc + Dv, 0.0f);
  if (rs.poisoned) {
    fill_nan(out, Dv);
    return kNaN;
  }
  if (rs.n == 0) {
    store_row(acc, Dv, out);
    return kInf;
  }
  const float mx = *std::max_element(rs.val.begin(), rs.val.begin() + rs.n);
  float l = 0.0f;
  for (int64_t e = 0; e < rs.n; ++e) {
    const float p = std::exp(rs.val[e] - mx);
    l += p;
    const T* vr = vh + static_cast<int64_t>(rs.idx[e]) * Dv;
    for (int64_t c = 0; c < Dv; ++c) acc[c] += p * static_cast<float>(vr[c]);
  }
  if (!all_finite(acc, Dv)) {  // a selected key's v is not finite
    fill_nan(out, Dv);
    return kNaN;
  }
  const float inv = 1.0f / l;
  for (int64_t c = 0; c < Dv; ++c) acc[c] *= inv;
  store_row(acc, Dv, out);
  return mx + std::log(l);
}

// The query rows one task owns: `rows` consecutive rows of q / out / tau (in (B, Hq, Nq) order)
// from row `base`; row r is query i0 + r % per_head (local to sequence s) of head h0 + r / per_head.
struct TaskRows {
  int64_t s, b, h0, hk, i0, rows, per_head, base;
  int64_t head(int64_t r) const { return h0 + r / per_head; }
  int64_t query(int64_t r) const { return i0 + r % per_head; }
};

// Tasks are (sequence, head, block of kBM queries), except for grouped-query decode steps of dense or
// padded batches: there the G query heads that share a kv head (G * Nq <= kGemvMaxRows) form one
// task, so K is read once for all of them rather than once per head. Their rows are consecutive in
// q, so no copy is needed.
struct Tiling {
  int64_t G = 1, tile;
  std::vector<TaskRows> tasks;
  Tiling(const Dims& d, const Ragged& rg) {
    if (!rg.varlen)
      for (int64_t g = d.Nq <= kGemvMaxRows ? kGemvMaxRows / std::max<int64_t>(d.Nq, 1) : 1; g > 1 && G == 1; --g)
        if (d.group() % g == 0) G = g;
    tile = 0;
    for (int64_t s = 0; s < static_cast<int64_t>(rg.seqs.size()); ++s) {
      const Seq& sq = rg.seqs[s];
      for (int64_t h0 = 0; h0 < d.Hq; h0 += G)
        for (int64_t i0 = 0; i0 < sq.nq; i0 += (G > 1 ? sq.nq : kBM)) {
          TaskRows tr;
          tr.s = s;
          tr.b = sq.b;
          tr.h0 = h0;
          tr.hk = h0 / d.group();
          tr.i0 = i0;
          tr.rows = G > 1 ? G * sq.nq : std::min(kBM, sq.nq - i0);
          tr.per_head = G > 1 ? sq.nq : tr.rows;
          tr.base = rg.row0(d, sq, h0) + i0;
          tasks.push_back(tr);
          tile = std::max(tile, tr.rows);  // the most rows a task has
        }
    }
  }
};

// Selection, and (when v is given) the attention over the selection. tau, and out/lse with v.
// gamma (Hq,) or nullptr for all ones; slopes (Hq,) or nullptr for no ALiBi.
template <typename T>
void select_kernel(const T* q, const T* k, const T* v, const float* gamma, const float* slopes, float* tau, T* out,
                   float* lse, const Dims& d, const Ragged& rg, bool causal, float scale, int64_t K) {
  const Tiling tiling(d, rg);
  const int64_t tasks = static_cast<int64_t>(tiling.tasks.size()), tile = tiling.tile;
  const int64_t threads = at::get_num_threads();
  int64_t max_nk = 0;
  for (const Seq& sq : rg.seqs) max_nk = std::max(max_nk, sq.nk);
  // Split keys when the rows are long (decoding) and the tasks do not divide evenly over the
  // threads: the fewest splits that make tasks * splits a multiple of the thread count (one task on
  // two threads: two halves; more splits only add merge work and GEMV calls).
  // FASTATTN_TOPK_SPLITS=1 turns splitting off (the benchmark's "without key splitting" baseline).
  const char* env = std::getenv("FASTATTN_TOPK_SPLITS");
  int64_t splits = 1;
  if (tasks > 0 && tasks < 4 * threads && max_nk >= 4 * kBN)
    splits = std::clamp<int64_t>(threads / std::gcd(tasks, threads), 1, max_nk / kBN);
  if (env != nullptr && std::atoi(env) >= 1) splits = std::min<int64_t>(std::atoi(env), std::max<int64_t>(1, max_nk / kBN));
  auto key_range = [&](const TaskRows& tr, int64_t split) {  // the keys [lo, hi) of one split of a task
    const Seq& sq = rg.seqs[tr.s];
    const int64_t span = (sq.nk + splits - 1) / splits, lo = split * span;
    return std::pair{lo, std::min(sq.limit(causal, tr.query(tr.rows - 1)), std::min(sq.nk, lo + span))};
  };
  std::vector<int64_t> cost(tasks * splits);
  for (int64_t job = 0; job < tasks * splits; ++job) {
    const TaskRows& tr = tiling.tasks[job / splits];
    const auto [lo, hi] = key_range(tr, job % splits);
    cost[job] = tr.rows * (std::max<int64_t>(hi - lo, 0) + 16);
  }
  // With splits, each (task, split) keeps its rows' candidates here for the merge, at stride `tile`.
  std::vector<RowTopK> parts(splits > 1 ? tasks * splits * tile : 0, RowTopK(K));
  run_balanced(balance(cost, threads), [&](int64_t, const std::vector<int64_t>& mine) {
    // Score scratch, uninitialized (every element is written before it is read) and kept per
    // thread across calls: allocating, zeroing or freeing 64 KB per call shows in a ~30 us decode step.
    thread_local const std::unique_ptr<float[]> S(new float[kBM * kBN]);
    std::vector<float> qbuf(std::is_same_v<T, float> ? 0 : tile * d.D), kbuf, acc(d.Dv), qpad(kGemvMaxRows * d.D);
    std::vector<float> qscaled(tiling.G > 1 && gamma ? tile * d.D : 0);
    std::vector<RowTopK> local(splits > 1 ? 0 : tile, RowTopK(K));  // a task has at most `tile` rows
    for (const int64_t job : mine) {
      const int64_t split = job % splits, task = job / splits;
      const TaskRows& tr = tiling.tasks[task];
      const Seq& sq = rg.seqs[tr.s];
      const int64_t rows = tr.rows;
      const float* Q = tile_ptr(q + tr.base * d.D, rows, d.D, qbuf.data());
      const T* kh = k + d.k_off(tr.b, tr.hk) + sq.k0 * d.D;
      float alpha = (gamma ? gamma[tr.h0] : 1.0f) * scale;
      if (!qscaled.empty()) {  // heads with their own gamma in one product: gamma goes into q
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < d.D; ++c) qscaled[r * d.D + c] = Q[r * d.D + c] * gamma[tr.head(r)];
        Q = qscaled.data();
        alpha = scale;
      }
      RowTopK* sel = splits > 1 ? parts.data() + (task * splits + split) * tile : local.data();
      for (int64_t r = 0; r < rows; ++r) sel[r].reset();
      const auto [lo, hi] = key_range(tr, split);
      // Decode-sized blocks (up to kGemvMaxRows rows) take their scores from gemv_small, which
      // reads K once in its own dtype, 2048 keys at a time; longer blocks take proportionally
      // wider key tiles than kBN: the same S scratch, one GEMM call instead of dozens of tiny ones.
      const bool small = rows <= kGemvMaxRows;
      const int64_t bn = small ? 8 * kBN : std::max<int64_t>(kBN, (kBM / rows) * kBN);
      if (!small && !std::is_same_v<T, float>) kbuf.resize(bn * d.D);
      for (int64_t j0 = lo; j0 < hi; j0 += bn) {
        const int64_t cols = std::min(bn, hi - j0);
        if (rg.allowed(tr.b, sq.k0 + j0, cols) == 0) continue;  // padding only
        const bool* keep = rg.keep(tr.b, sq.k0 + j0, cols);
        if (small)
          gemv_small(rows, cols, d.D, alpha, Q, kh + j0 * d.D, S.get(), bn, qpad.data());
        else
          gemm_nt(rows, cols, d.D, alpha, Q, d.D, tile_ptr(kh + j0 * d.D, cols, d.D, kbuf.data()),
                  d.D, 0.0f, S.get(), bn);
        for (int64_t r = 0; r < rows; ++r) {
          float* s = S.get() + r * bn;
          const int64_t i = tr.query(r), i_abs = i + sq.offset();
          if (slopes) {
            const float slope = slopes[tr.head(r)];
            for (int64_t c = 0; c < cols; ++c) s[c] = relu_score(s[c], 1.0f, slope, i_abs, j0 + c);
          }
          const int64_t limit = sq.limit(causal, i), lim = std::clamp<int64_t>(limit - j0, 0, cols);
          sel[r].poisoned |= !mask_row(s, j0, cols, limit, nullptr, keep);
          sel[r].push_row(s, cols, rg.allowed(tr.b, sq.k0 + j0, lim), j0);
        }
      }
      if (splits > 1) continue;
      const T* vh = v ? v + d.v_off(tr.b, tr.hk) + sq.k0 * d.Dv : nullptr;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = tr.base + r;
        tau[row] = sel[r].finish();
        if (v) lse[row] = attend_row(sel[r], vh, d.Dv, acc.data(), out + row * d.Dv);
      }
    }
  });
  if (splits == 1) return;
  // Merge: every key >= topk_with_margin(global K-th) is held by its split (a split's K-th is <= the
  // global one), so the union's selection is the global selection.
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(d.Dv);
    for (int64_t task = begin; task < end; ++task) {
      const TaskRows& tr = tiling.tasks[task];
      const Seq& sq = rg.seqs[tr.s];
      for (int64_t r = 0; r < tr.rows; ++r) {
        RowTopK all(K);
        for (int64_t sp = 0; sp < splits; ++sp) {
          const RowTopK& part = parts[(task * splits + sp) * tile + r];
          all.allowed += part.allowed;
          all.poisoned |= part.poisoned;
          for (int64_t e = 0; e < part.n; ++e) all.add(part.val[e], part.idx[e]);
        }
        const int64_t row = tr.base + r;
        tau[row] = all.finish();
        if (v) lse[row] = attend_row(all, v + d.v_off(tr.b, tr.hk) + sq.k0 * d.Dv, d.Dv, acc.data(), out + row * d.Dv);
      }
    }
  });
}

}  // namespace

at::Tensor topk_attention_threshold_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& gamma,
                                        const at::Tensor& alibi_slopes, bool causal, double scale, int64_t topk,
                                        const RaggedArgs& ra) {
  const char* op = "topk_attention_threshold";
  const Dims d = check_kv_view_inputs(op, q, k, k);  // k may be a KV-cache view
  const Ragged rg = make_ragged(op, d, ra);
  check_head_param(op, "gamma", gamma, q.size(1), false);
  check_head_param(op, "alibi_slopes", alibi_slopes, q.size(1), true);
  TORCH_CHECK(topk >= 1 && topk <= 4096, op, ": topk must be in [1, 4096] on the cpu backend, got ", topk);
  auto tau = at::empty({d.B, d.Hq, d.Nq}, q.options().dtype(at::kFloat));
  if (tau.numel() == 0) return tau;
  if (d.Nk == 0) return tau.fill_(-kInf);
  dispatch_float_types(q.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    select_kernel<T>(q.data_ptr<T>(), k.data_ptr<T>(), nullptr, gamma.data_ptr<float>(),
                     alibi_slopes.numel() ? alibi_slopes.data_ptr<float>() : nullptr, tau.data_ptr<float>(), nullptr,
                     nullptr, d, rg, causal, static_cast<float>(scale), topk);
  });
  return tau;
}

}  // namespace fastattn::cpu

namespace fastattn::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                      const at::Tensor& v, int64_t topk, bool causal,
                                                                      double scale, const RaggedArgs& ra) {
  const char* op = "topk_attention_fwd";
  const Dims d = check_kv_view_inputs(op, q, k, v);  // k, v may be KV-cache views
  const Ragged rg = make_ragged(op, d, ra);
  TORCH_CHECK(topk >= 1 && topk <= 4096, op, ": topk must be in [1, 4096] on the cpu backend, got ", topk);
  auto f32 = q.options().dtype(at::kFloat);
  auto tau = at::empty({d.B, d.Hq, d.Nq}, f32), lse = at::empty({d.B, d.Hq, d.Nq}, f32);
  auto out = at::empty({d.B, d.Hq, d.Nq, d.Dv}, q.options());
  if (tau.numel() == 0) return {out, lse, tau};
  if (d.Nk == 0) return {out.zero_(), lse.fill_(kInf), tau.fill_(-kInf)};
  dispatch_float_types(q.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    select_kernel<T>(q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), nullptr, nullptr,
                     tau.data_ptr<float>(), out.data_ptr<T>(), lse.data_ptr<float>(), d, rg, causal,
                     static_cast<float>(scale), topk);
  });
  return {out, lse, tau};
}

}  // namespace fastattn::cpu
