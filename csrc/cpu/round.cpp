// Streaming round: see round.h. Threads split the rows of one image at a time (pass A over
// the rows, a barrier, pass B over bands of rows emitting candidates), then one thread runs
// the image's greedy and the top-K bookkeeping while the others wait; the greedy touches
// only the candidates, which the cut-off keeps few once the buffer holds K picks.
#include "round.h"

#include <algorithm>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace cbda {

namespace {

// raised (std::domain_error -> ValueError) after the threads join; cbda/backends/cpu.py turns
// it into the API's InputError with the same text as the other backends
const char* const kNonFiniteMessage =
    "logits: contains NaN or +inf values, or a pixel whose every class is -inf "
    "(-inf alone is accepted: a masked class with probability 0)";

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline int thread_count() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}
inline int resolve_threads(int n) {
#ifdef _OPENMP
  return n > 0 ? n : omp_get_max_threads();
#else
  (void)n;
  return 1;
#endif
}

// Rows [lo, hi) of thread t of nt: contiguous bands, so pass B's column sums roll.
inline void band(int64_t H, int t, int nt, int64_t& lo, int64_t& hi) {
  lo = H * t / nt;
  hi = H * (t + 1) / nt;
}

}  // namespace

Round::Round(int64_t H, int64_t W, int64_t radius, int64_t quota, int64_t total, int num_threads)
    : H_(H), W_(W), radius_(radius), quota_(quota), total_(total), threads_(resolve_threads(num_threads)) {
  E_.resize(H * W);
  L_.resize(H * W);
  blocked_.resize(H * W);
  rows_.resize(threads_);
  bands_.resize(threads_);
  tcand_.resize(threads_);
  thist_.resize(threads_);
  picks_.resize(std::max<int64_t>(quota, 1));
  pick_scores_.resize(std::max<int64_t>(quota, 1));
}

template <typename PassA, typename Emit, typename LabelAt>
void Round::run_batch(int64_t B, const int64_t* ids, const PriorPicksView& prior, PassA&& pass_a,
                      Emit&& emit, LabelAt&& label_at, int64_t hist_classes, int64_t* hist) {
  const int64_t H = H_, W = W_, HW = H * W;
  // Images with nothing to pick, decided before the threads start: a thread that skips an
  // image runs ahead into the next one, so this flag must not be shared state it rewrites.
  std::vector<uint8_t> skip(B);
  for (int64_t b = 0; b < B; ++b) skip[b] = quota_ <= 0 || (prior.whole != nullptr && prior.whole[b]);
  bool has_blocked = false;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads_)
#endif
  {
    const int tid = thread_id(), nt = thread_count();
    int64_t* th = nullptr;
    if (hist != nullptr) {
      thist_[tid].assign(hist_classes, 0);
      th = thist_[tid].data();
    }
    int64_t lo, hi;
    band(H, tid, nt, lo, hi);
    for (int64_t b = 0; b < B; ++b) {
      if (skip[b]) {  // still scored when the pseudo-label histogram is wanted
        if (th != nullptr) pass_a(b, lo, hi, tid, th);
        continue;
      }
#ifdef _OPENMP
#pragma omp single
#endif
      has_blocked = block_prior(prior, b, H, W, radius_, blocked_.data());
      // (implicit barrier: every thread sees has_blocked; no thread still works on image b-1)
      pass_a(b, lo, hi, tid, th);
#ifdef _OPENMP
#pragma omp barrier
#endif
      // pass B + emission: unblocked centres whose weighted score beats the cut-off; the
      // test happens here, so rejected pixels cost no memory at all
      std::vector<Cand>& out = tcand_[tid];
      out.clear();
      const Cutoff cut = cut_;
      const int64_t base = ids[b] * HW;
      const uint8_t* blk = has_blocked ? blocked_.data() : nullptr;
      auto sink = [&](int64_t i, float s) {
        if (blk != nullptr && blk[i]) return;
        if (cut.active && !cut.beaten_by(s, base + i)) return;
        out.push_back({s, static_cast<uint32_t>(i)});
      };
      emit(b, lo, hi, tid, sink);
#ifdef _OPENMP
#pragma omp barrier
#pragma omp single
#endif
      {
        cand_.clear();
        for (auto& v : tcand_) cand_.insert(cand_.end(), v.begin(), v.end());
        const int64_t n = greedy_candidates(cand_, H, W, radius_, quota_, has_blocked, blocked_.data(),
                                            picks_.data(), pick_scores_.data());
        for (int64_t k = 0; k < n; ++k)
          buf_.push_back({pick_scores_[k], base + picks_[k], label_at(b, picks_[k])});
        if (total_ >= 0 && (static_cast<int64_t>(buf_.size()) > 2 * total_ ||
                            (!cut_.active && static_cast<int64_t>(buf_.size()) >= total_)))
          trim();
      }  // implicit barrier
    }
    if (th != nullptr) {
#ifdef _OPENMP
#pragma omp critical
#endif
      for (int64_t c = 0; c < hist_classes; ++c) hist[c] += th[c];
    }
  }
}

void Round::trim() {
  // Select back to exactly K and raise the cut-off to the K-th key: a later candidate that
  // does not beat it can never enter the top-K (keys are unique), so exactness holds.
  const int64_t K = total_;
  if (K <= 0) {
    buf_.clear();
    return;
  }
  if (static_cast<int64_t>(buf_.size()) < K) return;
  std::nth_element(buf_.begin(), buf_.begin() + (K - 1), buf_.end(), pick_better);
  buf_.resize(K);
  cut_ = {true, buf_[K - 1].score, buf_[K - 1].gidx};
}

void Round::add_logits(const LogitsView& lv, const int64_t* ids, int heuristic, int64_t heur_radius,
                       uint64_t seed, const float* weights, const PriorPicksView& prior, int64_t* hist) {
  const ScoreConfig cfg = make_config(lv, heuristic, heur_radius, H_, W_, seed);
  const int64_t C = lv.C;
  float* E = E_.data();
  int32_t* L = L_.data();
  auto pass_a = [&](int64_t b, int64_t lo, int64_t hi, int tid, int64_t* th) {
    if (lo < hi) pass_a_rows(lv, cfg, b, static_cast<uint64_t>(ids[b]), lo, hi, E, L, rows_[tid], th);
  };
  auto emit = [&](int64_t, int64_t lo, int64_t hi, int tid, auto& sink) {
    if (lo >= hi) return;
    if (weights != nullptr)
      pass_b_rows(E, L, cfg, C, lo, hi, bands_[tid], [&](int64_t i, float s, int32_t lab) { sink(i, s * weights[lab]); });
    else
      pass_b_rows(E, L, cfg, C, lo, hi, bands_[tid], [&](int64_t i, float s, int32_t) { sink(i, s); });
  };
  auto label_at = [&](int64_t, int64_t pix) { return static_cast<int64_t>(L[pix]); };
  for (auto& rs : rows_) rs.bad = 0;
  run_batch(lv.B, ids, prior, pass_a, emit, label_at, C, hist);
  int64_t bad = 0;
  for (const auto& rs : rows_) bad += rs.bad;
  if (bad) throw std::domain_error(kNonFiniteMessage);
}

void Round::add_scores(const float* scores, const int64_t* labels, int64_t B, const int64_t* ids,
                       const float* weights, int64_t num_classes, const PriorPicksView& prior) {
  (void)num_classes;
  const int64_t HW = H_ * W_, W = W_;
  auto pass_a = [](int64_t, int64_t, int64_t, int, int64_t*) {};
  auto emit = [&](int64_t b, int64_t lo, int64_t hi, int, auto& sink) {
    const float* s = scores + b * HW;
    const int64_t* l = labels != nullptr ? labels + b * HW : nullptr;
    for (int64_t i = lo * W; i < hi * W; ++i) {
      const float v = (weights != nullptr && l != nullptr) ? s[i] * weights[l[i]] : s[i];
      sink(i, v);
    }
  };
  auto label_at = [&](int64_t b, int64_t pix) { return labels != nullptr ? labels[b * HW + pix] : int64_t{0}; };
  run_batch(B, ids, prior, pass_a, emit, label_at, 0, nullptr);
}

void Round::finish(int64_t* ids, int64_t* ys, int64_t* xs, float* scores, int64_t* classes) {
  std::sort(buf_.begin(), buf_.end(), pick_better);
  const int64_t n = finish_size();
  const int64_t HW = H_ * W_;
  for (int64_t k = 0; k < n; ++k) {
    const Pick& p = buf_[k];
    const int64_t pix = p.gidx % HW;
    ids[k] = p.gidx / HW;
    ys[k] = pix / W_;
    xs[k] = pix % W_;
    scores[k] = p.score;
    classes[k] = p.cls;
  }
}

void score_maps(const LogitsView& lv, const int64_t* ids, int heuristic, int64_t radius,
                int64_t H, int64_t W, uint64_t seed, float* out_scores, int64_t* out_labels,
                int num_threads) {
  const ScoreConfig cfg = make_config(lv, heuristic, radius, H, W, seed);
  const int64_t HW = H * W;
  std::vector<float> E(HW);
  std::vector<int32_t> L(HW);
  const int nt_req = resolve_threads(num_threads);
  int64_t bad = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt_req) reduction(+ : bad)
#endif
  {
    const int tid = thread_id(), nt = thread_count();
    (void)tid;
    RowScratch rs;
    BandScratch bs;
    int64_t lo, hi;
    band(H, tid, nt, lo, hi);
    for (int64_t b = 0; b < lv.B; ++b) {
      if (lo < hi) pass_a_rows(lv, cfg, b, static_cast<uint64_t>(ids[b]), lo, hi, E.data(), L.data(), rs, nullptr);
#ifdef _OPENMP
#pragma omp barrier
#endif
      float* os = out_scores + b * HW;
      int64_t* ol = out_labels + b * HW;
      if (lo < hi)
        pass_b_rows(E.data(), L.data(), cfg, lv.C, lo, hi, bs, [&](int64_t i, float s, int32_t lab) {
          os[i] = s;
          ol[i] = lab;
        });
#ifdef _OPENMP
#pragma omp barrier
#endif
    }
    bad += rs.bad;
  }
  if (bad) throw std::domain_error(kNonFiniteMessage);
}

}  // namespace cbda
