// One acquisition round on the CPU (strategies ra/cbra/da/cbda): fused scoring of each
// batch, candidate emission against the round's cut-off, the exact per-image greedy and the
// streaming global top-K. Raw pointers only (docs/architecture.md).
#pragma once
#include <cstdint>
#include <vector>

#include "greedy.h"
#include "score.h"

namespace cbda {

// A pick of the round: its weighted score, global index image_id·H·W + y·W + x, class.
struct Pick {
  float score;
  int64_t gidx;
  int64_t cls;
};

// The order of docs/semantics.md: score desc, global index asc (a strict total order: indices differ).
inline bool pick_better(const Pick& a, const Pick& b) {
  if (a.score > b.score) return true;
  if (a.score < b.score) return false;
  return a.gidx < b.gidx;
}

// Memory. Per round: the pick buffer, O(K) for da/cbda (trimmed back to K whenever it passes
// 2K), the picks themselves for ra/cbra. Per image in flight: one H·W float (pre-weighting
// values), one H·W int32 (labels), one H·W byte (blocked), the candidates that beat the
// cut-off, and per thread a C·W row buffer. Nothing is O(N·H·W); the scratch is reused
// across images and batches, so an image whose scores all fall below the cut-off costs one
// pass over its logits and no allocation.
class Round {
 public:
  // quota: greedy picks per image at most; total: K for da/cbda, < 0 for ra/cbra (no trim).
  Round(int64_t H, int64_t W, int64_t radius, int64_t quota, int64_t total, int num_threads);

  // One batch of logits; ids [B] int64; weights [C] float32 or null; hist [C] int64 or null
  // (pseudo-label counts are added to it).
  void add_logits(const LogitsView& lv, const int64_t* ids, int heuristic, int64_t heur_radius,
                  uint64_t seed, const float* weights, const PriorPicksView& prior, int64_t* hist);
  // One batch of precomputed scores [B, H, W] float32 and labels [B, H, W] int64 (or null:
  // class 0, weights then unused), contiguous.
  void add_scores(const float* scores, const int64_t* labels, int64_t B, const int64_t* ids,
                  const float* weights, int64_t num_classes, const PriorPicksView& prior);

  int64_t size() const { return static_cast<int64_t>(buf_.size()); }
  // The picks in that order (at most K for da/cbda); arrays of finish_size() entries.
  int64_t finish_size() const { return total_ >= 0 ? std::min<int64_t>(size(), total_) : size(); }
  void finish(int64_t* ids, int64_t* ys, int64_t* xs, float* scores, int64_t* classes);

  Cutoff cutoff() const { return cut_; }

 private:
  // The batch loop shared by both inputs: pass_a(b, lo, hi, tid, hist) scores rows [lo, hi)
  // of image b (may do nothing), emit(b, lo, hi, tid, sink) hands every pixel's weighted score
  // and label of those rows to sink(i, score, label), label_at(b, i) gives a pick's class.
  template <typename PassA, typename Emit, typename LabelAt>
  void run_batch(int64_t B, const int64_t* ids, const PriorPicksView& prior, PassA&& pass_a,
                 Emit&& emit, LabelAt&& label_at, int64_t hist_classes, int64_t* hist);
  void trim();

  int64_t H_, W_, radius_, quota_, total_;
  int threads_;
  std::vector<float> E_;
  std::vector<int32_t> L_;
  std::vector<uint8_t> blocked_;
  std::vector<RowScratch> rows_;
  std::vector<BandScratch> bands_;
  std::vector<std::vector<Cand>> tcand_;  // per thread
  std::vector<std::vector<int64_t>> thist_;
  std::vector<Cand> cand_;                // one image, merged
  std::vector<int64_t> picks_;
  std::vector<float> pick_scores_;
  std::vector<Pick> buf_;
  Cutoff cut_{false, 0.0f, 0};
};

// cbda.score on the CPU: scores [B, H, W] float32 and labels [B, H, W] int64 (both written).
void score_maps(const LogitsView& lv, const int64_t* ids, int heuristic, int64_t radius,
                int64_t H, int64_t W, uint64_t seed, float* out_scores, int64_t* out_labels,
                int num_threads);

}  // namespace cbda
