// Pass B of the fused scoring (template, included by score.h): the final score of each pixel
// of a band of rows, handed to a sink (a score map writer or the candidate emitter).
//
// Window statistics by running sums. Per band, column sums over the 2R+1 rows of the window
// (class counts and entropy sums) are rolled down one row at a time (add the entering row,
// remove the leaving one: O(W)); along each row a running class histogram and entropy sum
// slide over the 2R+1 columns. A slide step costs min(2R+1, C) (re-reading the column's labels
// when the window is shorter than C, else adding the column's C counts), so even RIPU's 65×65
// impurity window costs O(H·W·C), never O(H·W·R²). Impurity terms are summed in class order in
// blocks of 16 like torch's sum over dim 1; absent classes contribute -0.0 and are skipped.
#pragma once
#include <algorithm>
#include <cstring>

namespace cbda {

inline void BandScratch::ensure(int64_t C, int64_t W, int64_t R) {
  if (static_cast<int64_t>(colE.size()) < W) colE.resize(W);
  if (static_cast<int64_t>(colCnt.size()) < W * C) colCnt.resize(W * C);
  if (static_cast<int64_t>(cnt.size()) < C) cnt.resize(C);
  const int64_t n = (2 * R + 1) * (2 * R + 1);
  if (static_cast<int64_t>(tab.size()) != n + 1) {
    tab.resize(n + 1);
    for (int64_t k = 0; k <= n; ++k) {
      const float q = static_cast<float>(static_cast<double>(k) / static_cast<double>(n));
      tab[k] = q * math::log_f(q + 1e-6f);
    }
  }
}

template <typename Sink>
void pass_b_rows(const float* E, const int32_t* L, const ScoreConfig& cfg, int64_t C, int64_t ya,
                 int64_t yb, BandScratch& bs, Sink&& sink) {
  const int64_t H = cfg.H, W = cfg.W;
  if (cfg.heuristic != kRipu && cfg.heuristic != kRipuPixel) {
    for (int64_t i = ya * W; i < yb * W; ++i) sink(i, E[i], L[i]);
    return;
  }
  const int64_t R = cfg.radius;
  const bool ripu = cfg.heuristic == kRipu;
  const bool by_labels = 2 * R + 1 < C;  // slide by re-reading labels, else by count vectors
  bs.ensure(C, W, R);
  const int64_t nfull = (2 * R + 1) * (2 * R + 1);
  double* colE = bs.colE.data();
  int32_t* colCnt = bs.colCnt.data();
  int32_t* cnt = bs.cnt.data();
  const float* tab = bs.tab.data();
  const float lc = cfg.ln_c;

  auto add_row = [&](int64_t r, int sign) {
    const float* e = E + r * W;
    const int32_t* l = L + r * W;
    if (ripu)
      for (int64_t x = 0; x < W; ++x) colE[x] += sign > 0 ? static_cast<double>(e[x]) : -static_cast<double>(e[x]);
    if (!by_labels)
      for (int64_t x = 0; x < W; ++x) colCnt[x * C + l[x]] += sign;
  };
  std::fill(colE, colE + W, 0.0);
  if (!by_labels) std::fill(colCnt, colCnt + W * C, 0);
  int64_t top = std::max<int64_t>(0, ya - R), bot = std::min<int64_t>(H, ya + R + 1);  // window rows [top, bot)
  for (int64_t r = top; r < bot; ++r) add_row(r, +1);

  for (int64_t y = ya; y < yb; ++y) {
    if (y > ya) {  // roll the column sums down one row
      const int64_t ntop = std::max<int64_t>(0, y - R), nbot = std::min<int64_t>(H, y + R + 1);
      for (int64_t r = top; r < ntop; ++r) add_row(r, -1);
      for (int64_t r = bot; r < nbot; ++r) add_row(r, +1);
      top = ntop;
      bot = nbot;
    }
    const int64_t ny = bot - top;
    auto add_col = [&](int64_t x, int32_t sign) {
      if (by_labels) {
        for (int64_t r = top; r < bot; ++r) cnt[L[r * W + x]] += sign;
      } else {
        const int32_t* cc = colCnt + x * C;
        for (int64_t c = 0; c < C; ++c) cnt[c] += sign * cc[c];
      }
    };
    std::fill(cnt, cnt + C, 0);
    double esum = 0.0;
    for (int64_t x = 0; x <= std::min<int64_t>(R, W - 1); ++x) {
      add_col(x, 1);
      esum += colE[x];
    }
    for (int64_t x = 0; x < W; ++x) {
      const int64_t nx = std::min<int64_t>(W - 1, x + R) - std::max<int64_t>(0, x - R) + 1;
      const int64_t n = ny * nx;
      float acc = 0.0f, blocks = 0.0f;
      if (n == nfull) {
        for (int64_t c = 0; c < C; ++c) {
          if (c > 0 && (c & 15) == 0) { blocks = blocks + acc; acc = 0.0f; }
          if (cnt[c]) acc = acc + tab[cnt[c]];
        }
      } else {
        const double dn = static_cast<double>(n);
        for (int64_t c = 0; c < C; ++c) {
          if (c > 0 && (c & 15) == 0) { blocks = blocks + acc; acc = 0.0f; }
          if (cnt[c]) {
            const float q = static_cast<float>(static_cast<double>(cnt[c]) / dn);
            acc = acc + q * math::log_f(q + 1e-6f);
          }
        }
      }
      const float P = -(blocks + acc) / lc;
      const int64_t i = y * W + x;
      const float other = ripu ? static_cast<float>(esum / static_cast<double>(n)) : E[i];
      sink(i, P * other, L[i]);
      // slide the window one column right
      if (x + R + 1 < W) {
        add_col(x + R + 1, 1);
        if (ripu) esum += colE[x + R + 1];
      }
      if (x - R >= 0) {
        add_col(x - R, -1);
        if (ripu) esum -= colE[x - R];
      }
    }
  }
}

}  // namespace cbda
