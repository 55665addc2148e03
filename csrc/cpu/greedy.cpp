// Per-image greedy with blocking, touching only the prefix of the sorted order it needs.
//
// The greedy sequence equals a scan of the centres in (score desc, index asc) order that
// keeps a centre when no kept centre lies within Chebyshev distance 2r (blocking is
// symmetric). So instead of RIPU's argmax-per-pick loop (O(m·H·W)) we partially sort: take
// the next `chunk` best candidates with nth_element, sort only them, scan, and double the
// chunk until the quota is met. With a small quota this reads the scores once and sorts
// O(quota) elements; chains of smoothly decreasing scores cost nothing extra.
#include "greedy.h"

#include <algorithm>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace cbda {
namespace {

inline void block_box(uint8_t* blocked, int64_t H, int64_t W, int64_t y, int64_t x, int64_t reach) {
  const int64_t y0 = std::max<int64_t>(0, y - reach), y1 = std::min<int64_t>(H - 1, y + reach);
  const int64_t x0 = std::max<int64_t>(0, x - reach), x1 = std::min<int64_t>(W - 1, x + reach);
  for (int64_t yy = y0; yy <= y1; ++yy) std::fill(blocked + yy * W + x0, blocked + yy * W + x1 + 1, 1);
}

}  // namespace

bool block_prior(const PriorPicksView& prior, int64_t b, int64_t H, int64_t W, int64_t radius,
                 uint8_t* blocked) {
  if (prior.offsets == nullptr || prior.offsets[b] == prior.offsets[b + 1]) return false;
  std::fill(blocked, blocked + H * W, 0);
  for (int64_t p = prior.offsets[b]; p < prior.offsets[b + 1]; ++p)
    block_box(blocked, H, W, prior.ys[p], prior.xs[p], prior.radii[p] + radius);
  return true;
}

int64_t greedy_candidates(std::vector<Cand>& cand, int64_t H, int64_t W, int64_t radius,
                          int64_t quota, bool has_blocked, uint8_t* blocked, int64_t* out_pix,
                          float* out_score) {
  if (!has_blocked) std::fill(blocked, blocked + H * W, 0);
  const int64_t total = static_cast<int64_t>(cand.size());
  const int64_t reach = 2 * radius;
  int64_t count = 0, lo = 0;
  // A pick removes at most (4r+1)^2 candidates, so quota·(4r+1)^2 bounds what a full scan
  // can need; start with a few times the quota and double.
  int64_t chunk = std::max<int64_t>(1024, 4 * quota);
  while (count < quota && lo < total) {
    const int64_t hi = std::min(total, lo + chunk);
    if (hi < total) std::nth_element(cand.begin() + lo, cand.begin() + hi, cand.end(), better);
    std::sort(cand.begin() + lo, cand.begin() + hi, better);
    for (int64_t k = lo; k < hi && count < quota; ++k) {
      const uint32_t pix = cand[k].pix;
      if (blocked[pix]) continue;
      if (out_score != nullptr) out_score[count] = cand[k].score;
      out_pix[count++] = pix;
      if (reach > 0) block_box(blocked, H, W, pix / W, pix % W, reach);
      else blocked[pix] = 1;
    }
    lo = hi;
    chunk *= 2;
  }
  return count;
}

int64_t greedy_select_image(const float* scores, int64_t image_id, int64_t H, int64_t W,
                            int64_t radius, const PriorPicksView& prior, int64_t b,
                            int64_t quota, Cutoff cutoff, int64_t* out_pix, uint8_t* blocked) {
  const int64_t n = H * W;
  if (quota <= 0 || (prior.whole != nullptr && prior.whole[b])) return 0;
  const bool has_blocked = block_prior(prior, b, H, W, radius, blocked);
  // Candidates: unblocked centres that beat the cut-off.
  std::vector<Cand> cand;
  cand.reserve(static_cast<size_t>(cutoff.active ? std::min<int64_t>(n, 4 * quota + 1024) : n));
  const int64_t base = image_id * n;
  for (int64_t i = 0; i < n; ++i) {
    if (has_blocked && blocked[i]) continue;
    const float s = scores[i];
    if (cutoff.active && !cutoff.beaten_by(s, base + i)) continue;
    cand.push_back({s, static_cast<uint32_t>(i)});
  }
  return greedy_candidates(cand, H, W, radius, quota, has_blocked, blocked, out_pix);
}

void greedy_select_batch(const float* scores, const int64_t* image_ids, int64_t B, int64_t H,
                         int64_t W, int64_t radius, const PriorPicksView& prior, int64_t quota,
                         Cutoff cutoff, int64_t* out_pix, int64_t* out_count, int num_threads) {
  const int64_t n = H * W;
#ifdef _OPENMP
  if (num_threads <= 0) num_threads = omp_get_max_threads();
#pragma omp parallel num_threads(num_threads)
#endif
  {
    std::vector<uint8_t> blocked(static_cast<size_t>(n));
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t b = 0; b < B; ++b) {
      out_count[b] = greedy_select_image(scores + b * n, image_ids[b], H, W, radius, prior, b,
                                         quota, cutoff, out_pix + b * quota, blocked.data());
    }
  }
}

}  // namespace cbda
