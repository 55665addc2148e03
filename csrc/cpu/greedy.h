// Exact per-image greedy selection with blocking (DESIGN §1, strategy ra; the per-image
// sequences that da merges). Raw pointers only: no torch headers (DESIGN §2).
#pragma once
#include <cstdint>

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
};

// For every image b of a batch, the first `quota` picks of its greedy sequence: best
// unblocked centre first, each pick blocking centres within Chebyshev distance 2r, centres
// within r_prev + r of an earlier pick blocked from the start. Candidates not beating
// `cutoff` are ignored (they can never enter a global top-K whose K-th key beats them).
//
// scores: [B, H, W] float32 (already class weighted). image_ids: [B].
// out_pix: [B, quota] y*W+x of each pick in pick order; out_count: [B].
void greedy_select_batch(const float* scores, const int64_t* image_ids, int64_t B, int64_t H,
                         int64_t W, int64_t radius, const PriorPicksView& prior, int64_t quota,
                         Cutoff cutoff, int64_t* out_pix, int64_t* out_count, int num_threads);

// Same for one image; `blocked` is scratch of H*W bytes, initialised here.
int64_t greedy_select_image(const float* scores, int64_t image_id, int64_t H, int64_t W,
                            int64_t radius, const PriorPicksView& prior, int64_t b,
                            int64_t quota, Cutoff cutoff, int64_t* out_pix, uint8_t* blocked);

}  // namespace cbda
