// Pass A of the fused scoring, included once per ISA variant (score_rows_generic.cpp,
// score_rows_avx2.cpp) inside that variant's namespace.
//
// Layout and traffic. One output row at a time: for each class, the row is upsampled from
// two rows of the low-resolution logits into a C×W float buffer (per thread, about 80 KB for
// C = 19, W = 1024, so it stays in L2); the per-pixel reductions over the classes then run
// class by class over that buffer, each inner loop over x being a `#pragma omp simd` loop
// (the full-resolution logits never exist beyond one row). The logits are read at their
// own resolution, about once per output row that uses them (L1/L2 hits after the first).
//
// Arithmetic mirrors the reference op by op, in float32 and without contraction
// (fp-contract=off below): the bilinear value is ATen's fma(t0, wy0, t1·wy1) with
// t = fma(v0, wx0, v1·wx1) (bit-identical, so pseudo labels are identical; a tap of weight
// 0 is skipped so that a masked -inf class next to it does not make 0·-inf = NaN), softmax is
// exp(x - max) / Σ exp, entropy Σ p ln(p + 1e-6) in class order. Only exp/log differ from
// SLEEF's by about an ulp.

namespace {

template <typename T>
inline float load(const T* p);
template <>
inline float load<float>(const float* p) { return *p; }
struct BF16 { uint16_t bits; };
struct F16 { uint16_t bits; };
template <>
inline float load<BF16>(const BF16* p) { return math::bf16_to_f32(p->bits); }
template <>
inline float load<F16>(const F16* p) { return math::f16_to_f32(p->bits); }

template <typename T>
void rows_t(const LogitsView& lv, const ScoreConfig& cfg, int64_t b, uint64_t image_id, int64_t ya,
            int64_t yb, float* E, int32_t* L, RowScratch& rs, int64_t* hist) {
  const int64_t C = lv.C, W = cfg.W;
  const T* base = static_cast<const T*>(lv.data) + b * lv.sB;
  float* __restrict u = rs.u.data();
  float* __restrict m = rs.m.data();
  float* __restrict s = rs.s.data();
  float* __restrict acc = rs.acc.data();
  float* __restrict p1 = rs.p1.data();
  float* __restrict p2 = rs.p2.data();
  int32_t* __restrict lab = rs.lab.data();
  const int32_t* __restrict xi0 = cfg.ax.j0.data();
  const int32_t* __restrict xi1 = cfg.ax.j1.data();
  float* __restrict f0 = rs.f0.data();
  float* __restrict f1 = rs.f1.data();
  const float* __restrict wx0 = cfg.ax.l0.data();
  const float* __restrict wx1 = cfg.ax.l1.data();
  const int64_t sW = lv.sW;
  const int heur = cfg.heuristic;
  // random: the per-image part of the hash chain (cbda.scores.random_scores)
  const uint32_t himg = mix32(static_cast<uint32_t>(image_id & 0xffffffffu) ^
                              mix32(static_cast<uint32_t>(image_id >> 32) ^ cfg.seed_mix));
  for (int64_t y = ya; y < yb; ++y) {
    // -- upsampled logits of this row, class by class ---------------------------------------
    for (int64_t c = 0; c < C; ++c) {
      const T* pc = base + c * lv.sC;
      float* __restrict uc = u + c * W;
      if (cfg.upsample) {
        // the two source rows as float32 first (contiguous, vectorised), then the bilinear
        // blend gathers from them with 32-bit indices (AVX2 vgatherdps)
        const T* r0 = pc + cfg.ay.i0[y] * lv.sH;
        const T* r1 = pc + cfg.ay.i1[y] * lv.sH;
        const int64_t w = lv.w;
        if (sW == 1) {
#pragma omp simd
          for (int64_t k = 0; k < w; ++k) { f0[k] = load(r0 + k); f1[k] = load(r1 + k); }
        } else {
          for (int64_t k = 0; k < w; ++k) { f0[k] = load(r0 + k * sW); f1[k] = load(r1 + k * sW); }
        }
        // NaN/+inf anywhere in the source rows is an error (flag read once per batch)
        int bad = 0;
#pragma omp simd reduction(| : bad)
        for (int64_t k = 0; k < w; ++k) bad |= math::nan_or_pinf(f0[k]) | math::nan_or_pinf(f1[k]);
        rs.bad += bad;
        const float wy0 = cfg.ay.l0[y], wy1 = cfg.ay.l1[y];
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) {
          const int32_t a = xi0[x], b1 = xi1[x];
          const float t0 = math::lerp_skip0(f0[a], wx0[x], f0[b1], wx1[x]);
          const float t1 = math::lerp_skip0(f1[a], wx0[x], f1[b1], wx1[x]);
          uc[x] = math::lerp_skip0(t0, wy0, t1, wy1);
        }
      } else {
        const T* r = pc + y * lv.sH;
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) uc[x] = load(r + x * sW);
        int bad = 0;
#pragma omp simd reduction(| : bad)
        for (int64_t x = 0; x < W; ++x) bad |= math::nan_or_pinf(uc[x]);
        rs.bad += bad;
      }
    }
    // -- max and pseudo label (strict >: the lowest class wins ties, like torch.argmax) ----
#pragma omp simd
    for (int64_t x = 0; x < W; ++x) { m[x] = u[x]; lab[x] = 0; }
    for (int64_t c = 1; c < C; ++c) {
      const float* __restrict uc = u + c * W;
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) {
        const bool g = uc[x] > m[x];
        m[x] = g ? uc[x] : m[x];
        lab[x] = g ? static_cast<int32_t>(c) : lab[x];
      }
    }
    {  // a pixel whose every class is -inf has no softmax: an error like NaN
      int none = 0;
#pragma omp simd reduction(| : none)
      for (int64_t x = 0; x < W; ++x) none |= (m[x] == -std::numeric_limits<float>::infinity()) ? 1 : 0;
      rs.bad += none;
    }
    float* __restrict e_row = E + y * W;
    int32_t* __restrict l_row = L + y * W;
    for (int64_t x = 0; x < W; ++x) l_row[x] = lab[x];
    if (hist != nullptr)
      for (int64_t x = 0; x < W; ++x) ++hist[lab[x]];
    if (heur == kRandom) {
      const uint32_t row = static_cast<uint32_t>(y * W);
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) {
        const uint32_t hh = mix32((row + static_cast<uint32_t>(x)) ^ himg);
        e_row[x] = static_cast<float>(hh >> 8) * (1.0f / 16777216.0f);
      }
      continue;
    }
    // -- softmax denominator: Σ exp(x - max) in class order (torch's _vec_softmax) -----------
#pragma omp simd
    for (int64_t x = 0; x < W; ++x) s[x] = 0.0f;
    for (int64_t c = 0; c < C; ++c) {
      float* __restrict uc = u + c * W;
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) {
        const float ex = math::exp_f(uc[x] - m[x]);
        uc[x] = ex;
        s[x] = s[x] + ex;
      }
    }
    if (heur == kRipu || heur == kRipuPixel || heur == kEntropy) {
      // Σ_c p ln(p + 1e-6) summed as torch's sum over dim 1 does: classes in blocks of 16
      // summed in order, then the block sums in order (p2 holds the running block total)
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) { acc[x] = 0.0f; p2[x] = 0.0f; }
      for (int64_t c = 0; c < C; ++c) {
        const float* __restrict uc = u + c * W;
        if (c > 0 && c % 16 == 0) {
#pragma omp simd
          for (int64_t x = 0; x < W; ++x) { p2[x] = p2[x] + acc[x]; acc[x] = 0.0f; }
        }
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) {
          const float p = uc[x] / s[x];
          const float t = p * math::log_f(p + 1e-6f);
          acc[x] = acc[x] + t;
        }
      }
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) acc[x] = p2[x] + acc[x];
      if (heur == kRipuPixel) {
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) e_row[x] = -acc[x];
      } else {
        const float lc = cfg.ln_c;
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) e_row[x] = -acc[x] / lc;
      }
    } else {  // margin / least confidence: the two largest probabilities
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) { p1[x] = -1.0f; p2[x] = -1.0f; }
      for (int64_t c = 0; c < C; ++c) {
        const float* __restrict uc = u + c * W;
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) {
          const float p = uc[x] / s[x];
          const bool g1 = p > p1[x];
          const bool g2 = p > p2[x];
          p2[x] = g1 ? p1[x] : (g2 ? p : p2[x]);
          p1[x] = g1 ? p : p1[x];
        }
      }
      if (heur == kMargin) {
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) e_row[x] = 1.0f - (p1[x] - p2[x]);
      } else {
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) e_row[x] = 1.0f - p1[x];
      }
    }
  }
}

}  // namespace

void pass_a_rows(const LogitsView& lv, const ScoreConfig& cfg, int64_t b, uint64_t image_id,
                 int64_t ya, int64_t yb, float* E, int32_t* L, RowScratch& rs, int64_t* hist) {
  switch (lv.dtype) {
    case kBF16: rows_t<BF16>(lv, cfg, b, image_id, ya, yb, E, L, rs, hist); break;
    case kF16: rows_t<F16>(lv, cfg, b, image_id, ya, yb, E, L, rs, hist); break;
    default: rows_t<float>(lv, cfg, b, image_id, ya, yb, E, L, rs, hist); break;
  }
}
