// Fused per-pixel scoring on the CPU: bilinear upsampling (align_corners=True) from the
// logits' own resolution, softmax, entropy, pseudo label and the per-pixel part of every
// heuristic (pass A), then the windowed statistics of the ripu scores with running sums
// (pass B). Raw pointers only, no torch headers (docs/architecture.md).
#pragma once
#include <cstdint>
#include <vector>

#include "score_math.h"

namespace cbda {

enum Heuristic : int { kRipu = 0, kRipuPixel = 1, kEntropy = 2, kMargin = 3, kLeastConf = 4, kRandom = 5 };
enum DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// One batch of logits (B, C, h, w) with element strides; any layout (non-contiguous ok).
struct LogitsView {
  const void* data;
  int dtype;
  int64_t B, C, h, w;
  int64_t sB, sC, sH, sW;
};

// Source indices and weights of the bilinear upsampling along one axis, computed exactly as
// ATen's CPU kernel does (float scale (in-1)/(out-1), floorf, clamped lambda), so that the
// upsampled logits, and hence the pseudo labels, are bit-identical to the reference.
struct Axis {
  std::vector<int64_t> i0, i1;
  std::vector<int32_t> j0, j1;  // the same as int32 (gather indices)
  std::vector<float> l0, l1;
  void init(int64_t in, int64_t out);
};

struct ScoreConfig {
  int heuristic;
  int64_t radius;  // window radius of the heuristic (r for ripu, 32 for ripu_pixel, else 0)
  int64_t H, W;
  bool upsample;   // false when (H, W) == (h, w): the logits are read as they are
  float ln_c;      // (float) ln C
  uint32_t seed_mix;
  Axis ay, ax;
};

ScoreConfig make_config(const LogitsView& lv, int heuristic, int64_t radius, int64_t H, int64_t W,
                        uint64_t seed);

// Per-thread row scratch of pass A: C*W upsampled logits plus a few W-sized rows.
struct RowScratch {
  std::vector<float> u, m, s, acc, p1, p2, f0, f1;
  std::vector<int32_t> lab;
  // rows that held NaN/+inf logits or a pixel with every class -inf (pass A counts them;
  // the batch's owner reads the sum once, after the threads join, and raises)
  int64_t bad = 0;
  void ensure(int64_t C, int64_t W, int64_t w);
};

// Pass A for rows [y0, y1) of image b: E[y*W + x] gets the per-pixel value the heuristic
// needs next (normalised entropy for ripu, unnormalised entropy for ripu_pixel, the final
// score otherwise) and L the pseudo label; hist (C int64, may be null) counts the labels.
// Dispatches to an AVX2+FMA build of the same code when the CPU has it.
void pass_a_rows(const LogitsView& lv, const ScoreConfig& cfg, int64_t b, uint64_t image_id,
                 int64_t y0, int64_t y1, float* E, int32_t* L, RowScratch& rs, int64_t* hist);

// The ISA variants behind pass_a_rows (same source, score_rows_impl.h).
namespace generic {
void pass_a_rows(const LogitsView&, const ScoreConfig&, int64_t, uint64_t, int64_t, int64_t, float*,
                 int32_t*, RowScratch&, int64_t*);
}
namespace avx2 {
void pass_a_rows(const LogitsView&, const ScoreConfig&, int64_t, uint64_t, int64_t, int64_t, float*,
                 int32_t*, RowScratch&, int64_t*);
}
bool have_avx2_fma();

// Pass B scratch: column sums of the window over the current band of rows.
struct BandScratch {
  std::vector<double> colE;
  std::vector<int32_t> colCnt;  // [W][C], pixel major: adding a column reads C contiguous ints
  std::vector<int32_t> cnt;
  std::vector<float> tab;       // q ln(q + 1e-6) for the interior window size
  void ensure(int64_t C, int64_t W, int64_t R);
};

// Pass B over rows [y0, y1): final score of every pixel from E and L (window statistics for
// ripu/ripu_pixel by running sums: O(W·C) per row whatever the radius), handed to
// sink(pixel index, score, label).
template <typename Sink>
void pass_b_rows(const float* E, const int32_t* L, const ScoreConfig& cfg, int64_t C, int64_t y0,
                 int64_t y1, BandScratch& bs, Sink&& sink);

}  // namespace cbda

#include "score_pass_b.h"
