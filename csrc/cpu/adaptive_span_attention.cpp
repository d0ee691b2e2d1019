// Fused, tiled CPU adaptive-span attention (docs/semantics.md §4). See adaptive_span_attention.h and the
// contract in fastattn/ops/adaptive_span_attention.py, whose skipping plan this file mirrors.
//
// Plan (host, O(Hq * Nq)): per head, the active query rows (g > 0) compacted in order, and the
// reach floor(fp32(R + span_h)) beyond which m = 0.
// Forward: one task per (batch, head, tile of <= kBM compacted rows): Q rows are gathered into a dense
// tile and only keys within reach of the tile's first..last row are visited (online softmax with
// the span factor m folded into the exponentials); cost ~ active rows x (span + R + tile).
// Backward: one task per (batch, kv head, key tile) owning dK, dV; it visits only the compacted
// query rows that can reach its keys, recomputing P~ = m exp(s - lse). dQ, the gate's per-row
// dg and the span gradient go to per-thread fp32 accumulators (linear in N), summed at the end.
#include "cpu/adaptive_span_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/selection.h"
#include "cpu/attention_common.h"
#include "cpu/row_stats.h"
#include "cpu/varlen.h"

namespace fastattn::cpu {
namespace {

// Tile sizes (B=1, H=8, N=4096, D=64, span 256, fp32, 2 cores): 64 compacted rows keep the band a
// tile spans (rows + span + R) close to what each row needs; 512 keys cover that band in one GEMM for
// spans up to ~400, so MKL sees few, larger calls.
constexpr int64_t kBM = 64;    // compacted query rows per forward task (at most; see forward_rows)
constexpr int64_t kBN = 512;   // keys per forward tile
constexpr int64_t kBMB = 64;   // compacted query rows per backward step
constexpr int64_t kBNB = 256;  // keys per backward task

// The ramp m(x) and the query gate g(i') are common/selection.h's (span_ramp_raw, span_gate).

// Largest distance x in [-1, Nq + Nk] with pred(span_ramp_raw(x)) (pred is monotone: true up to some x).
// Found from floor(A) by stepping, so fp32 rounding at the boundary is decided by the formula itself.
template <typename Pred>
int64_t last_distance(float A, float R, int64_t cap, Pred pred) {
  int64_t x = std::clamp<int64_t>(static_cast<int64_t>(std::floor(std::min(A, static_cast<float>(cap)))), 0, cap);
  while (x >= 0 && !pred(span_ramp_raw(A, R, x))) --x;
  while (x < cap && pred(span_ramp_raw(A, R, x + 1))) ++x;
  return x;
}

struct HeadPlan {
  int64_t reach;               // keys with m > 0 have x <= reach
  float A;                     // fp32(R + span_h): m = clamp((A - x) / R, 0, 1)
  int64_t x_keep;              // largest distance with m > 0
  int64_t x_flat;              // largest distance with (A - x) / R >= 1 (m == 1): forward's flat part
  int64_t x_flat_strict;       // largest distance with (A - x) / R > 1 (no span gradient): backward's
  std::vector<int32_t> idx;    // active query rows, increasing
  std::vector<float> g;        // gate per query row (all 1 without period)
  std::vector<int32_t> rank;   // rank[i] = number of active rows < i (size Nq + 1)
};

// Plans per sequence shape (nq, nk): every batch element of a dense or padded batch shares one.
struct Plan {
  Dims d;
  bool causal;
  float R;
  std::vector<std::vector<HeadPlan>> shapes;  // per distinct (nq, nk): one HeadPlan per query head
  std::vector<int32_t> shape_of;              // per sequence
  int64_t bm;                                 // forward: compacted rows per task
  const HeadPlan& head(int64_t s, int64_t h) const { return shapes[shape_of[s]][h]; }
};

// Forward rows per task: a tile's key band is (positions its rows cover) + reach, so with a gate
// that keeps a fraction f of the queries, 64 compacted rows cover ~64/f positions. Halving the rows
// when f <= 3/4 keeps the band, and the work per active row, near the ungated kernel's.
inline int64_t forward_rows(int64_t active, int64_t total) { return 4 * active > 3 * total ? kBM : kBM / 2; }

HeadPlan head_plan(int64_t nq, int64_t nk, int64_t h, const float* span, const float* period, const float* phase,
                   float R, double duty) {
  HeadPlan hp;
  hp.A = R + span[h];
  hp.reach = span_reach(hp.A, nq + nk + 1);
  hp.x_keep = last_distance(hp.A, R, nq + nk, [](float mm) { return mm > 0.0f; });
  hp.x_flat = last_distance(hp.A, R, nq + nk, [](float mm) { return mm >= 1.0f; });
  hp.x_flat_strict = last_distance(hp.A, R, nq + nk, [](float mm) { return mm > 1.0f; });
  hp.g.assign(nq, 1.0f);
  hp.rank.assign(nq + 1, 0);
  hp.idx.reserve(nq);
  for (int64_t i = 0; i < nq; ++i) {
    if (period) hp.g[i] = span_gate(i + nk - nq, phase[h], period[h], duty).g;  // i' local to the sequence
    hp.rank[i + 1] = hp.rank[i] + (hp.g[i] > 0.0f);
    if (hp.g[i] > 0.0f) hp.idx.push_back(static_cast<int32_t>(i));
  }
  return hp;
}

Plan make_plan(const Dims& d, const Ragged& rg, const float* span, const float* period, const float* phase,
               double ramp, double duty, bool causal) {
  Plan p{d, causal, static_cast<float>(ramp), {}, {}, kBM};
  std::vector<std::pair<int64_t, int64_t>> made;
  int64_t active = 0, total = 0;
  for (const Seq& sq : rg.seqs) {
    const auto key = std::pair{sq.nq, sq.nk};
    auto it = std::find(made.begin(), made.end(), key);
    if (it == made.end()) {
      made.push_back(key);
      p.shapes.emplace_back();
      for (int64_t h = 0; h < d.Hq; ++h)
        p.shapes.back().push_back(head_plan(sq.nq, sq.nk, h, span, period, phase, p.R, duty));
      it = made.end() - 1;
    }
    p.shape_of.push_back(static_cast<int32_t>(it - made.begin()));
    for (const HeadPlan& hp : p.shapes[p.shape_of.back()]) active += static_cast<int64_t>(hp.idx.size());
    total += d.Hq * sq.nq;
  }
  p.bm = forward_rows(active, total);
  return p;
}

// Column segments of one score row (keys j0 .. j0+cols-1 seen from absolute query position ip):
// keys with m > 0 are [k0, k1); within them the flat part (m == 1, no per-key factor) is [f0, f1);
// [k0, f0) and [f1, k1) are the ramp (bidirectional rows have a ramp on both sides).
// Ramp columns [c0, c1) of a score row whose column 0 has distance d0: s <- m exp(s - shift) with
// m = min((A - |d0 - c|) / R, 1); returns their sum. Branch-free so GCC vectorizes it.
inline float ramp_exp(float* s, int64_t c0, int64_t c1, int64_t d0, float A, float R, float shift) {
  for (int64_t c = c0; c < c1; ++c) {
    s[c] = std::min(span_ramp_raw(A, R, std::abs(d0 - c)), 1.0f) * fast_exp(s[c] - shift);
  }
  return row_sum(s + c0, c1 - c0);
}

struct Segments {
  int64_t k0, f0, f1, k1;
};

inline Segments row_segments(int64_t x_keep, int64_t x_flat, bool causal, int64_t ip, int64_t j0, int64_t cols) {
  const int64_t d0 = ip - j0;  // distance of column 0; column c has x = d0 - c
  auto cl = [cols](int64_t c) { return std::clamp<int64_t>(c, 0, cols); };
  Segments sg;
  sg.k0 = cl(d0 - x_keep);
  sg.k1 = cl(causal ? d0 + 1 : d0 + x_keep + 1);
  sg.f0 = std::clamp<int64_t>(d0 - x_flat, sg.k0, sg.k1);
  sg.f1 = causal ? sg.k1 : std::clamp<int64_t>(d0 + x_flat + 1, sg.f0, sg.k1);
  return sg;
}

// The keys [k0, k1) of a forward score row that have m > 0: padded ones (keep false) -> -inf;
// poison |= a remaining score is not finite, or a key with a non-finite v (`bad`) is among them.
// Returns the row max over them (-inf when all are padding).
inline float mask_segment(float* s, const Segments& sg, const bool* keep, const std::vector<int32_t>& bad,
                          uint8_t& poison) {
  float* x = s + sg.k0;
  const int64_t n = sg.k1 - sg.k0;
  if (keep != nullptr) {
    poison |= !mask_row(x, 0, n, n, nullptr, keep + sg.k0);
  } else {
    poison |= !all_finite(x, n);
  }
  for (const int32_t c : bad) poison |= c >= sg.k0 && c < sg.k1 && s[c] != -kInf;
  return row_max(x, n);
}

template <typename T>
void gather_rows(const T* base, const int32_t* rows_idx, int64_t rows, int64_t width, float* dst) {
  for (int64_t r = 0; r < rows; ++r) load_tile(base + static_cast<int64_t>(rows_idx[r]) * width, width, 1, width,
                                               dst + r * width, width);
}

// Tasks: forward (sequence, query head, tile of compacted rows), backward (sequence, kv head, key
// tile). Costs for the balanced schedule: rows times the keys their band spans.
struct Task {
  int32_t s, h;
  int64_t c0;  // first compacted row (forward) or local key (backward)
};

// The tasks (sequence, query head, chunk of `bm` compacted rows) of a pass over query rows, with their costs.
void row_chunk_tasks(const Plan& P, const Ragged& rg, int64_t bm, std::vector<Task>& tasks, std::vector<int64_t>& cost) {
  for (int32_t s = 0; s < static_cast<int32_t>(rg.seqs.size()); ++s)
    for (int32_t h = 0; h < P.d.Hq; ++h) {
      const HeadPlan& hp = P.head(s, h);
      for (int64_t c0 = 0; c0 < static_cast<int64_t>(hp.idx.size()); c0 += bm) {
        tasks.push_back({s, h, c0});
        cost.push_back(bm * (std::min(rg.seqs[s].nk, hp.reach + 2 * bm) + 16));
      }
    }
}

template <typename T>
void fwd_kernel(const T* q, const T* k, const T* v, T* out, float* lse, const Plan& P, const Ragged& rg,
                float scale) {
  const Dims& d = P.d;
  std::vector<Task> tasks;
  std::vector<int64_t> cost;
  row_chunk_tasks(P, rg, P.bm, tasks, cost);
  run_balanced(balance(cost, at::get_num_threads()), [&](int64_t, const std::vector<int64_t>& mine) {
    std::vector<float> S(kBM * kBN), acc(kBM * d.Dv), mx(kBM), l(kBM), Q(kBM * d.D);
    std::vector<float> kbuf(std::is_same_v<T, float> ? 0 : kBN * d.D);
    std::vector<float> vbuf(std::is_same_v<T, float> ? 0 : kBN * d.Dv), vclean;
    std::vector<uint8_t> poison(kBM);
    std::vector<int32_t> bad;
    for (const int64_t task : mine) {
      const Seq& sq = rg.seqs[tasks[task].s];
      const int64_t h = tasks[task].h, c0 = tasks[task].c0, b = sq.b;
      const HeadPlan& hp = P.head(tasks[task].s, h);
      const int64_t rows = std::min<int64_t>(P.bm, static_cast<int64_t>(hp.idx.size()) - c0);
      const int32_t* rid = hp.idx.data() + c0;  // local query rows
      const int64_t hk = h / d.group(), row0 = rg.row0(d, sq, h);
      gather_rows(q + row0 * d.D, rid, rows, d.D, Q.data());
      const int64_t ip_first = rid[0] + sq.offset(), ip_last = rid[rows - 1] + sq.offset();
      const int64_t lo = std::clamp<int64_t>(ip_first - hp.reach, 0, sq.nk);
      const int64_t hi = std::min<int64_t>(P.causal ? ip_last + 1 : ip_last + hp.reach + 1, sq.nk);
      const T* kh = k + d.k_off(b, hk) + sq.k0 * d.D;
      const T* vh = v + d.v_off(b, hk) + sq.k0 * d.Dv;
      std::fill(mx.begin(), mx.end(), -kInf);
      std::fill(l.begin(), l.end(), 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(poison.begin(), poison.end(), 0);
      for (int64_t j0 = lo; j0 < hi; j0 += kBN) {
        const int64_t cols = std::min(kBN, hi - j0);
        if (rg.allowed(b, sq.k0 + j0, cols) == 0) continue;  // padding only
        const bool* keep = rg.keep(b, sq.k0 + j0, cols);
        const float* K = tile_ptr(kh + j0 * d.D, cols, d.D, kbuf.data());
        gemm_nt(rows, cols, d.D, scale, Q.data(), d.D, K, d.D, 0.0f, S.data(), kBN);
        // Keys with a non-finite v are zeroed for the P V product (most rows see only part of a
        // tile); the rows that reach them are poisoned (see attention_common.h).
        const float* V = tile_ptr(vh + j0 * d.Dv, cols, d.Dv, vbuf.data());
        nonfinite_rows(V, cols, d.Dv, d.Dv, bad);
        if (!bad.empty()) {
          vclean.resize(kBN * d.Dv);
          V = zero_rows(V, cols, d.Dv, bad, vclean.data());
        }
        for (int64_t r = 0; r < rows; ++r) {
          float* s = S.data() + r * kBN;
          const int64_t ip = rid[r] + sq.offset();
          const Segments sg = row_segments(hp.x_keep, hp.x_flat, P.causal, ip, j0, cols);
          const float m_new = sg.k0 < sg.k1 ? std::max(mx[r], mask_segment(s, sg, keep, bad, poison[r])) : -kInf;
          if (m_new == -kInf) {  // no key of this tile reaches the row (or all are padding): P row zero
            std::fill(s, s + cols, 0.0f);
            continue;
          }
          std::fill(s, s + sg.k0, 0.0f);
          std::fill(s + sg.k1, s + cols, 0.0f);
          const float sum = exp_shift_sum(s + sg.f0, sg.f1 - sg.f0, m_new) +
                            ramp_exp(s, sg.k0, sg.f0, ip - j0, hp.A, P.R, m_new) +
                            ramp_exp(s, sg.f1, sg.k1, ip - j0, hp.A, P.R, m_new);
          const float alpha = fast_exp(mx[r] - m_new);  // 0 when mx was -inf
          if (alpha != 1.0f) scale_row(acc.data() + r * d.Dv, d.Dv, alpha);
          l[r] = l[r] * alpha + sum;
          mx[r] = m_new;
        }
        gemm_nn(rows, d.Dv, cols, 1.0f, S.data(), kBN, V, d.Dv, 1.0f, acc.data(), d.Dv);
      }
      for (int64_t r = 0; r < rows; ++r) {
        float* a = acc.data() + r * d.Dv;
        const int64_t i = rid[r];
        if (poison[r] || !all_finite(a, d.Dv)) {  // a non-finite q, or k / v of a key with m > 0
          fill_nan(out + (row0 + i) * d.Dv, d.Dv);
          lse[row0 + i] = kNaN;
          continue;
        }
        const float mult = l[r] > 0.0f ? hp.g[i] / l[r] : 0.0f;
        for (int64_t c = 0; c < d.Dv; ++c) a[c] *= mult;
        store_row(a, d.Dv, out + (row0 + i) * d.Dv);
        lse[row0 + i] = l[r] > 0.0f ? mx[r] + std::log(l[r]) : kInf;
      }
    }
  });
}

// The backward's steps: compacted query rows in chunks at multiples of kBMB (whatever key tile they
// meet, so that the row-statistics pre-pass and the main pass issue the same GEMMs, row_stats.h)
// against the keys of a key tile within reach of the chunk's first..last row.
struct Step {
  int64_t rows, jl, jh;  // chunk rows; keys [jl, jh) (empty when jh <= jl)
};

inline Step step_of(const HeadPlan& hp, const Seq& sq, bool causal, int64_t j0, int64_t cols, int64_t c0) {
  const int64_t rows = std::min<int64_t>(kBMB, static_cast<int64_t>(hp.idx.size()) - c0);
  const int64_t ip_first = hp.idx[c0] + sq.offset(), ip_last = hp.idx[c0 + rows - 1] + sq.offset();
  return {rows, std::max(j0, ip_first - hp.reach),
          std::min(j0 + cols, causal ? ip_last + 1 : ip_last + hp.reach + 1)};
}

// The chunks [first, end) with a row that can see a key of [j0, j0 + cols): 0 <= i' - j <= reach
// (|.| bidirectional).
inline std::pair<int64_t, int64_t> chunks_of(const HeadPlan& hp, const Seq& sq, bool causal, int64_t j0,
                                             int64_t cols) {
  const int64_t q_lo = std::clamp<int64_t>((causal ? j0 : j0 - hp.reach) - sq.offset(), 0, sq.nq);
  const int64_t q_hi = std::clamp<int64_t>(j0 + cols - 1 + hp.reach - sq.offset() + 1, 0, sq.nq);
  const int64_t c_lo = hp.rank[q_lo], c_hi = std::max<int64_t>(hp.rank[q_hi], c_lo);
  return {(c_lo / kBMB) * kBMB, c_hi};
}

// Tile loads and the two score GEMMs of a step (Pm = scale Q K^T, dP = dO V^T), shared by both passes.
template <typename T>
struct BwdTiles {
  const T *dout, *q, *k, *v;
  const Dims& d;
  KeyTile kt;
  std::vector<float> Pm, dP, Q, dO;
  const float* Qs = nullptr;

  BwdTiles(const T* dout_, const T* q_, const T* k_, const T* v_, const Dims& d_)
      : dout(dout_), q(q_), k(k_), v(v_), d(d_), kt(kBNB, d_), Pm(kBMB * kBNB), dP(kBMB * kBNB), Q(kBMB * d.D),
        dO(kBMB * d.Dv) {}
  void load_keys(int64_t krow, int64_t cols) { kt.load(k, v, krow, cols, d); }
  // Rows rid[0, rows) of the head starting at row0.
  void load_queries(int64_t row0, const int32_t* rid, int64_t rows) {
    gather_rows(q + row0 * d.D, rid, rows, d.D, Q.data());
    gather_rows(dout + row0 * d.Dv, rid, rows, d.Dv, dO.data());
    Qs = kt.clean.q(Q.data(), rows, d.D);
  }
  // The loaded rows against keys [kc, kc + n) of the loaded key tile.
  void scores(int64_t rows, int64_t kc, int64_t n, float scale) {
    gemm_nt(rows, n, d.D, scale, Qs, d.D, kt.K + kc * d.D, d.D, 0.0f, Pm.data(), kBNB);
    gemm_nt(rows, n, d.Dv, 1.0f, dO.data(), d.Dv, kt.V + kc * d.Dv, d.Dv, 0.0f, dP.data(), kBNB);
  }
};

// The span factor m of column c of a score row whose column 0 has distance d0 (ramp columns).
inline float ramp_weight(const HeadPlan& hp, float R, int64_t d0, int64_t c) {
  return std::min(span_ramp_raw(hp.A, R, std::abs(d0 - c)), 1.0f);
}

// Backward tasks: one per (sequence, kv head, key tile), cost ~ keys x rows within reach.
void bwd_tasks(const Plan& P, const Ragged& rg, std::vector<Task>& tasks, std::vector<int64_t>& cost) {
  const Dims& d = P.d;
  for (int32_t s = 0; s < static_cast<int32_t>(rg.seqs.size()); ++s) {
    const Seq& sq = rg.seqs[s];
    int64_t reach = 0;
    for (int64_t h = 0; h < d.Hq; ++h) reach = std::max(reach, P.head(s, h).reach);
    for (int64_t j0 = 0; j0 < sq.nk; j0 += kBNB) {
      const int64_t cols = std::min(kBNB, sq.nk - j0);
      if (rg.allowed(sq.b, sq.k0 + j0, cols) == 0) continue;  // padding only: dk, dv stay 0
      for (int32_t hk = 0; hk < d.Hk; ++hk) {
        tasks.push_back({s, hk, j0});
        cost.push_back(cols * (std::min(sq.nq, reach + cols) * d.group() + 16));
      }
    }
  }
}

// Row statistics pre-pass (row_stats.h): one task per (sequence, query head, chunk), walking the key
// tiles the main pass meets it with. lse, delta: (B, Hq, Nq) fp32, written on active rows; delta
// includes the gate (delta_i = g_i sum_j P~_ij dPraw_ij). A NaN row of the forward keeps lse = NaN.
template <typename T>
void row_stats_kernel(const T* dout, const T* q, const T* k, const T* v, const float* lse_fwd, float* lse,
                      float* delta, const Plan& P, const Ragged& rg, float scale) {
  const Dims& d = P.d;
  std::vector<Task> tasks;
  std::vector<int64_t> cost;
  row_chunk_tasks(P, rg, kBMB, tasks, cost);
  run_balanced(balance(cost, at::get_num_threads()), [&](int64_t, const std::vector<int64_t>& mine) {
    BwdTiles<T> tiles(dout, q, k, v, d);
    RowStats st;
    std::vector<float> w(kBNB);
    for (const int64_t task : mine) {
      const Seq& sq = rg.seqs[tasks[task].s];
      const int64_t h = tasks[task].h, c0 = tasks[task].c0, b = sq.b, hk = h / d.group();
      const HeadPlan& hp = P.head(tasks[task].s, h);
      const int32_t* rid = hp.idx.data() + c0;
      const int64_t row0 = rg.row0(d, sq, h);
      const int64_t rows = std::min<int64_t>(kBMB, static_cast<int64_t>(hp.idx.size()) - c0);
      st.reset(rows);
      tiles.load_queries(row0, rid, rows);
      for (int64_t j0 = 0; j0 < sq.nk; j0 += kBNB) {
        const int64_t cols = std::min(kBNB, sq.nk - j0);
        if (rg.allowed(b, sq.k0 + j0, cols) == 0) continue;  // as bwd_tasks
        const auto [first, end] = chunks_of(hp, sq, P.causal, j0, cols);
        const Step sp = step_of(hp, sq, P.causal, j0, cols, c0);
        if (c0 < first || c0 >= end || sp.jh <= sp.jl) continue;  // the main pass's skips
        const int64_t n = sp.jh - sp.jl, kc = sp.jl - j0;
        const bool* keep = rg.keep(b, sq.k0 + j0, cols);
        tiles.load_keys((b * d.Hk + hk) * d.Nk + sq.k0 + j0, cols);
        tiles.scores(rows, kc, n, scale);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t ip = rid[r] + sq.offset();
          float* p = tiles.Pm.data() + r * kBNB;
          const Segments sg = row_segments(hp.x_keep, hp.x_flat_strict, P.causal, ip, sp.jl, n);
          std::fill(p, p + sg.k0, -kInf);
          std::fill(p + sg.k1, p + n, -kInf);
          if (keep != nullptr)
            for (int64_t c = sg.k0; c < sg.k1; ++c) p[c] = keep[kc + c] ? p[c] : -kInf;
          std::fill(w.begin(), w.begin() + n, 1.0f);
          for (const auto [a, e] : {std::pair{sg.k0, sg.f0}, std::pair{sg.f1, sg.k1}})
            for (int64_t c = a; c < e; ++c) w[c] = ramp_weight(hp, P.R, ip - sp.jl, c);
          st.add(r, p, w.data(), tiles.dP.data() + r * kBNB, n);
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = row0 + rid[r];
        st.finish(r, lse + i, delta + i, hp.g[rid[r]]);
        if (std::isnan(lse_fwd[i])) lse[i] = kNaN;
      }
    }
  });
}

// Per-thread accumulators of the backward: dq (B*Hq*Nq*D), dg (B*Hq*Nq), dspan (Hq).
struct BwdAcc {
  float* dq;
  float* dg;
  float* dspan;
};

template <typename T>
void bwd_kernel(const T* dout, const T* q, const T* k, const T* v, const float* lse, const float* delta,
                const std::vector<BwdAcc>& accs, T* dk, T* dv, const Plan& P, const Ragged& rg, float scale) {
  const Dims& d = P.d;
  std::vector<Task> tasks;
  std::vector<int64_t> cost;
  bwd_tasks(P, rg, tasks, cost);
  run_balanced(balance(cost, static_cast<int64_t>(accs.size())), [&](int64_t l, const std::vector<int64_t>& list) {
    const BwdAcc& mine = accs[l];
    BwdTiles<T> tiles(dout, q, k, v, d);
    std::vector<float> dgv(kBNB), spv(kBNB), dK(kBNB * d.D), dV(kBNB * d.Dv), dQt(kBMB * d.D);
    for (const int64_t task : list) {
      const int32_t si = tasks[task].s;
      const Seq& sq = rg.seqs[si];
      const int64_t hk = tasks[task].h, b = sq.b, j0 = tasks[task].c0, cols = std::min(kBNB, sq.nk - j0);
      const int64_t krow = (b * d.Hk + hk) * d.Nk + sq.k0 + j0;
      const bool* keep = rg.keep(b, sq.k0 + j0, cols);
      tiles.load_keys(krow, cols);
      std::fill(dK.begin(), dK.end(), 0.0f);
      std::fill(dV.begin(), dV.end(), 0.0f);
      for (int64_t h = hk * d.group(); h < (hk + 1) * d.group(); ++h) {
        const HeadPlan& hp = P.head(si, h);
        const auto [first, end] = chunks_of(hp, sq, P.causal, j0, cols);
        const int64_t row0 = rg.row0(d, sq, h);
        double span_sum = 0.0;
        for (int64_t c0 = first; c0 < end; c0 += kBMB) {
          // Only the keys of this tile within reach of the chunk's first..last row (as in the
          // forward): keys no row can see are never loaded into a product.
          const Step sp = step_of(hp, sq, P.causal, j0, cols, c0);
          if (sp.jh <= sp.jl) continue;
          const int64_t rows = sp.rows, jl = sp.jl, n = sp.jh - sp.jl, kc = jl - j0;
          const int32_t* rid = hp.idx.data() + c0;
          tiles.load_queries(row0, rid, rows);
          tiles.scores(rows, kc, n, scale);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = rid[r], ip = i + sq.offset();
            float* p = tiles.Pm.data() + r * kBNB;
            float* dp = tiles.dP.data() + r * kBNB;
            const float L = lse[row0 + i], dl = delta[row0 + i], g = hp.g[i];
            const Segments sg = row_segments(hp.x_keep, hp.x_flat_strict, P.causal, ip, jl, n);
            if (std::isnan(L)) {  // a NaN row of the forward: NaN gradients through every key with m > 0
              std::fill(p, p + sg.k0, 0.0f);
              std::fill(dp, dp + sg.k0, 0.0f);
              nan_row_grad(p + sg.k0, dp + sg.k0, n - sg.k0, sg.k1 - sg.k0, keep ? keep + kc + sg.k0 : nullptr);
              if (sg.k0 < sg.k1) mine.dg[row0 + i] = kNaN;
              if (sg.k0 < sg.f0 || sg.f1 < sg.k1) span_sum = kNaN;
              continue;
            }
            if (keep != nullptr)  // padded keys: P~ = exp(-inf) = 0
              for (int64_t c = sg.k0; c < sg.k1; ++c) p[c] = keep[kc + c] ? p[c] : -kInf;
            std::fill(p, p + sg.k0, 0.0f);
            std::fill(p + sg.k1, p + n, 0.0f);
            std::fill(dp, dp + sg.k0, 0.0f);
            std::fill(dp + sg.k1, dp + n, 0.0f);
            // Flat part (m == 1): P~ = exp(s - lse).
            for (int64_t c = sg.f0; c < sg.f1; ++c) {
              const float pt = fast_exp(p[c] - L);  // L = +inf on empty rows -> 0
              dgv[c] = pt * dp[c];                  // dg_i term: P~ dPraw
              const float t = g * dp[c] - dl;       // dP - delta
              dp[c] = pt * t;                       // dS (scale in the GEMMs)
              p[c] = pt * g;                        // g P~ for dV
            }
            // Ramp (m <= 1, where the span gets its gradient): P~ = m exp(s - lse).
            for (const auto [c0, c1] : {std::pair{sg.k0, sg.f0}, std::pair{sg.f1, sg.k1}}) {
              for (int64_t c = c0; c < c1; ++c) {
                const float m = ramp_weight(hp, P.R, ip - jl, c);
                const float e = fast_exp(p[c] - L), pt = m * e, t = g * dp[c] - dl;
                dgv[c] = pt * dp[c];
                spv[c] = e * t;
                dp[c] = pt * t;
                p[c] = pt * g;
              }
              span_sum += row_sum(spv.data() + c0, c1 - c0);
            }
            mine.dg[row0 + i] += row_sum(dgv.data() + sg.k0, sg.k1 - sg.k0);
          }
          gemm_tn(n, d.Dv, rows, 1.0f, tiles.Pm.data(), kBNB, tiles.dO.data(), d.Dv, 1.0f, dV.data() + kc * d.Dv, d.Dv);
          gemm_tn(n, d.D, rows, scale, tiles.dP.data(), kBNB, tiles.Qs, d.D, 1.0f, dK.data() + kc * d.D, d.D);
          gemm_nn(rows, d.D, n, scale, tiles.dP.data(), kBNB, tiles.kt.K + kc * d.D, d.D, 0.0f, dQt.data(), d.D);
          for (int64_t r = 0; r < rows; ++r) {
            float* dst = mine.dq + (row0 + rid[r]) * d.D;
            const float* src = dQt.data() + r * d.D;
            for (int64_t c = 0; c < d.D; ++c) dst[c] += src[c];
          }
        }
        mine.dspan[h] += static_cast<float>(span_sum);
      }
      for (int64_t c = 0; c < cols; ++c) {
        store_row(dK.data() + c * d.D, d.D, dk + (krow + c) * d.D);
        store_row(dV.data() + c * d.Dv, d.Dv, dv + (krow + c) * d.Dv);
      }
    }
  });
}

struct Params {
  const float* span;
  const float* period;  // nullptr without the gate
  const float* phase;
};

Params check_params(const char* op, const at::Tensor& q, const at::Tensor& span, const at::Tensor& period,
                    const at::Tensor& phase, double ramp, double duty) {
  const int64_t Hq = q.size(1);
  check_head_param(op, "span", span, Hq, false);
  check_head_param(op, "period", period, Hq, true);
  check_head_param(op, "phase", phase, Hq, true);
  TORCH_CHECK((period.numel() == 0) == (phase.numel() == 0), op, ": period and phase are given together or not at all");
  TORCH_CHECK(ramp > 0 && std::isfinite(ramp), op, ": ramp must be a finite float > 0, got ", ramp);
  TORCH_CHECK(duty >= 0 && duty < 1, op, ": duty must be in [0, 1), got ", duty);
  const float* s = span.data_ptr<float>();
  for (int64_t h = 0; h < Hq; ++h) TORCH_CHECK(s[h] >= 0 && std::isfinite(s[h]), op, ": span must be finite and >= 0, got ", s[h]);
  if (period.numel() == 0) return {s, nullptr, nullptr};
  const float* per = period.data_ptr<float>();
  for (int64_t h = 0; h < Hq; ++h) TORCH_CHECK(per[h] > 0 && std::isfinite(per[h]), op, ": period must be finite and > 0, got ", per[h]);
  return {s, per, phase.data_ptr<float>()};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> adaptive_span_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                   const at::Tensor& v, const at::Tensor& span,
                                                                   const at::Tensor& period, const at::Tensor& phase,
                                                                   double ramp, double duty, bool causal,
                                                                   double scale, const RaggedArgs& ra) {
  constexpr const char* op = "adaptive_span_attention_fwd";
  const Dims d = check_kv_view_inputs(op, q, k, v);  // k, v may be KV-cache views
  const Params prm = check_params(op, q, span, period, phase, ramp, duty);
  const Ragged rg = make_ragged(op, d, ra);
  if (q.numel() == 0 || d.Nk == 0 || d.Dv == 0) {
    return {at::zeros({d.B, d.Hq, d.Nq, d.Dv}, q.options()),
            at::full({d.B, d.Hq, d.Nq}, kInf, q.options().dtype(at::kFloat))};
  }
  // Active rows are all written by the kernel; only gated-off rows need their zeros / +inf here.
  auto out = at::empty({d.B, d.Hq, d.Nq, d.Dv}, q.options());
  auto lse = at::empty({d.B, d.Hq, d.Nq}, q.options().dtype(at::kFloat));
  const Plan plan = make_plan(d, rg, prm.span, prm.period, prm.phase, ramp, duty, causal);
  dispatch_float_types(q.scalar_type(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    scalar_t* o = out.data_ptr<scalar_t>();
    float* ls = lse.data_ptr<float>();
    const int64_t S = static_cast<int64_t>(rg.seqs.size());
    at::parallel_for(0, S * d.Hq, 1, [&](int64_t begin, int64_t end) {
      for (int64_t sh = begin; sh < end; ++sh) {
        const Seq& sq = rg.seqs[sh / d.Hq];
        const HeadPlan& hp = plan.head(sh / d.Hq, sh % d.Hq);
        const int64_t row0 = rg.row0(d, sq, sh % d.Hq);
        for (int64_t i = 0; i < sq.nq; ++i) {
          if (hp.g[i] > 0.0f) continue;
          std::fill(o + (row0 + i) * d.Dv, o + (row0 + i + 1) * d.Dv, scalar_t(0));
          ls[row0 + i] = kInf;
        }
      }
    });
    fwd_kernel<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                         out.data_ptr<scalar_t>(), lse.data_ptr<float>(), plan, rg, static_cast<float>(scale));
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> adaptive_span_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& span, const at::Tensor& period, const at::Tensor& phase, double ramp,
    double duty, bool causal, double scale, const RaggedArgs& ra) {
  constexpr const char* op = "adaptive_span_attention_bwd";
  check_attention_inputs(op, q, k, v);
  const Params prm = check_params(op, q, span, period, phase, ramp, duty);
  const Dims d = dims_of(q, k, v);
  const Ragged rg = make_ragged(op, d, ra);
  TORCH_CHECK(dout.sizes() == out.sizes() && out.dim() == 4 && out.size(0) == d.B && out.size(1) == d.Hq &&
                  out.size(2) == d.Nq && out.size(3) == d.Dv && dout.scalar_type() == q.scalar_type() &&
                  out.scalar_type() == q.scalar_type() && dout.is_contiguous() && out.is_contiguous(),
              op, ": dout and out must be contiguous (B, Hq, Nq, Dv) tensors in q's dtype");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.is_contiguous() && lse.numel() == d.B * d.Hq * d.Nq, op,
              ": lse must be a contiguous float32 (B, Hq, Nq) tensor");
  const int64_t n_gate = prm.period ? d.Hq : 0;
  auto f32 = q.options().dtype(at::kFloat);
  auto dk = at::zeros_like(k), dv = at::zeros_like(v);
  auto dspan = at::zeros({d.Hq}, f32), dperiod = at::zeros({n_gate}, f32), dphase = at::zeros({n_gate}, f32);
  if (q.numel() == 0 || d.Nk == 0) return {at::zeros_like(q), dk, dv, dspan, dperiod, dphase};
  const Plan plan = make_plan(d, rg, prm.span, prm.period, prm.phase, ramp, duty, causal);
  // lse_i and delta_i = g_i sum_j P~_ij dPraw_ij from the backward's own scores (row_stats.h), not the
  // forward's lse and dout . out; gated-off rows keep the forward's lse (never read).
  auto lse_own = lse.clone(), delta = at::zeros_like(lse);
  const int64_t n_threads = at::get_num_threads();
  const int64_t n_dq = d.B * d.Hq * d.Nq * d.D, n_row = d.B * d.Hq * d.Nq;
  auto acc = at::zeros({n_threads, n_dq + n_row + d.Hq}, f32);
  std::vector<BwdAcc> accs;
  for (int64_t t = 0; t < n_threads; ++t) {
    float* base = acc.data_ptr<float>() + t * (n_dq + n_row + d.Hq);
    accs.push_back({base, base + n_dq, base + n_dq + n_row});
  }
  dispatch_float_types(q.scalar_type(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    row_stats_kernel<scalar_t>(dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                               v.data_ptr<scalar_t>(), lse.data_ptr<float>(), lse_own.data_ptr<float>(),
                               delta.data_ptr<float>(), plan, rg, static_cast<float>(scale));
    bwd_kernel<scalar_t>(dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                         v.data_ptr<scalar_t>(), lse_own.data_ptr<float>(), delta.data_ptr<float>(), accs,
                         dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), plan, rg, static_cast<float>(scale));
  });
  const auto total = acc.sum(0);
  auto dq = total.narrow(0, 0, n_dq).view(q.sizes()).to(q.scalar_type());
  dspan.copy_(total.narrow(0, n_dq + n_row, d.Hq) / ramp);
  if (prm.period) {
    // span_gate_grads per row (i' local to each sequence).
    const float* dg = total.data_ptr<float>() + n_dq;
    float* dper = dperiod.data_ptr<float>();
    float* dpha = dphase.data_ptr<float>();
    for (int64_t h = 0; h < d.Hq; ++h) {
      double sp = 0.0, sh = 0.0;
      for (const Seq& sq : rg.seqs)
        for (int64_t i = 0; i < sq.nq; ++i) {
          const SpanGate gt = span_gate(i + sq.offset(), prm.phase[h], prm.period[h], duty);
          if (gt.slope != 0.0) span_gate_grads(gt, prm.period[h], dg[rg.row0(d, sq, h) + i], &sh, &sp);
        }
      dper[h] = static_cast<float>(sp);
      dpha[h] = static_cast<float>(sh);
    }
  }
  return {dq, dk, dv, dspan, dperiod, dphase};
}

}  // namespace fastattn::cpu
