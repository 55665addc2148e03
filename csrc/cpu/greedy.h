// Exact per-image greedy selection with blocking (docs/semantics.md, strategy ra; the per-image
// sequences that da merges). Raw pointers only: no torch headers (docs/architecture.md).
#pragma once
#include <cstdint>
#include <vector>

namespace cbda {

// Earlier picks of each image of a batch, CSR over the batch (cbda.state.PriorPicks).
struct PriorPicksView {
  const int64_t* offsets;  // [B + 1]
  const int64_t* ys;       // [P]
  const int64_t* xs;       // [P]
  const int64_t* radii;    // [P]
  const uint8_t* whole;    // [B], 1 = the whole image is labelled already
};

// Candidates must beat (score, global index) in the order (score desc, index asc).
struct Cutoff {
  bool active;
  float score;
  int64_t gidx;
  bool beaten_by(float s, int64_t g) const { return s > score || (s == score && g < gidx); }
};

// A candidate centre of one image.
struct Cand {
  float score;
  uint32_t pix;  // y*W+x; H*W < 2^32 is checked in Python
};

// (score desc, pixel asc); -0.0 == +0.0 under float comparison, as the spec requires.
inline bool better(const Cand& a, const Cand& b) {
  if (a.score > b.score) return true;
  if (a.score < b.score) return false;
  return a.pix < b.pix;
}

// Blocks (sets to 1) the centres of image b that overlap its earlier picks; returns false,
// touching nothing, when the image has none.
bool block_prior(const PriorPicksView& prior, int64_t b, int64_t H, int64_t W, int64_t radius,
                 uint8_t* blocked);

// The first `quota` picks of the greedy over one image's candidates (its unblocked centres
// that beat the round's cut-off, in any order; reordered here). Only the prefix of the
// (score desc, pixel asc) order that the quota needs is sorted: nth_element + sort of a chunk
// that doubles until the quota is met. `blocked` (H*W bytes) holds the prior blocks when
// has_blocked, else it is cleared here; picks are written to out_pix as y*W+x (and their
// scores to out_score when given).
int64_t greedy_candidates(std::vector<Cand>& cand, int64_t H, int64_t W, int64_t radius,
                          int64_t quota, bool has_blocked, uint8_t* blocked, int64_t* out_pix,
                          float* out_score = nullptr);

}  // namespace cbda
