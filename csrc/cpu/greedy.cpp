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

}  // namespace cbda
