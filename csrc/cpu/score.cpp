// Set-up of the fused scoring: upsampling tables, scratch, ISA dispatch of pass A.
#include "score.h"

#include <cmath>
#include <cstdlib>

namespace cbda {

void Axis::init(int64_t in, int64_t out) {
  i0.resize(out);
  i1.resize(out);
  l0.resize(out);
  l1.resize(out);
  // ATen (UpSample.h): scale = float(in - 1) / (out - 1); src = scale * dst (float);
  // i0 = min(floor(src), in - 1); l1 = clamp(src - i0, 0, 1); i1 = i0 + (i0 < in - 1).
  const float scale = out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.0f;
  for (int64_t o = 0; o < out; ++o) {
    if (in == out) {
      i0[o] = i1[o] = o;
      l0[o] = 1.0f;
      l1[o] = 0.0f;
      continue;
    }
    const float src = scale * static_cast<float>(o);
    const int64_t a = std::min<int64_t>(static_cast<int64_t>(std::floor(src)), in - 1);
    const float lam = std::min(std::max(src - static_cast<float>(a), 0.0f), 1.0f);
    i0[o] = a;
    i1[o] = a + (a < in - 1 ? 1 : 0);
    l1[o] = lam;
    l0[o] = 1.0f - lam;
  }
  j0.assign(i0.begin(), i0.end());
  j1.assign(i1.begin(), i1.end());
}

ScoreConfig make_config(const LogitsView& lv, int heuristic, int64_t radius, int64_t H, int64_t W,
                        uint64_t seed) {
  ScoreConfig cfg;
  cfg.heuristic = heuristic;
  cfg.radius = heuristic == kRipu ? radius : heuristic == kRipuPixel ? 32 : 0;
  cfg.H = H;
  cfg.W = W;
  cfg.upsample = !(H == lv.h && W == lv.w);
  cfg.ln_c = static_cast<float>(std::log(static_cast<double>(lv.C)));
  cfg.seed_mix = mix32(static_cast<uint32_t>(seed & 0xffffffffu));
  if (cfg.upsample) {
    cfg.ay.init(lv.h, H);
    cfg.ax.init(lv.w, W);
  } else {  // pass A reads the logits directly; the x tables are still indexed by the simd loop
    cfg.ax.init(W, W);
    cfg.ay.init(H, H);
  }
  return cfg;
}

void RowScratch::ensure(int64_t C, int64_t W, int64_t w) {
  if (static_cast<int64_t>(f0.size()) < w) {
    f0.resize(w);
    f1.resize(w);
  }
  if (static_cast<int64_t>(u.size()) < C * W) u.resize(C * W);
  if (static_cast<int64_t>(m.size()) < W) {
    m.resize(W);
    s.resize(W);
    acc.resize(W);
    p1.resize(W);
    p2.resize(W);
    lab.resize(W);
  }
}

bool have_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  // CBDA_CPU_GENERIC=1 forces the portable build (tests compare the two bit for bit)
  static const bool ok = !(std::getenv("CBDA_CPU_GENERIC") && std::getenv("CBDA_CPU_GENERIC")[0] == '1') &&
                         __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

void pass_a_rows(const LogitsView& lv, const ScoreConfig& cfg, int64_t b, uint64_t image_id,
                 int64_t y0, int64_t y1, float* E, int32_t* L, RowScratch& rs, int64_t* hist) {
  rs.ensure(lv.C, cfg.W, lv.w);
  if (have_avx2_fma())
    avx2::pass_a_rows(lv, cfg, b, image_id, y0, y1, E, L, rs, hist);
  else
    generic::pass_a_rows(lv, cfg, b, image_id, y0, y1, E, L, rs, hist);
}

}  // namespace cbda
