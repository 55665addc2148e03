// Host harness of the CUDA tile kernel's arithmetic (csrc/cuda/tile_math.h), built by
// tests/test_cuda_host_math.py with the host compiler: it runs phases A-E of every tile
// exactly as the kernel does, one simulated thread after another between the barriers, on
// the same header, and writes the score and label maps. The kernel's selection epilogue
// (warp votes, atomics) is not here: tests of the CUDA backend cover it.
//
// usage: harness IN OUT
// IN  (little endian): int32 B, C, h, w, H, W, R, heur, dtype, check_values; uint32 seed_hash;
//     float ex2_rel, lg2_abs, lg2_rel, rcp_rel; int64 image_ids[B]; logits (B, C, h, w) in
//     dtype (0 float32, 1 bfloat16, 2 float16: raw element bits).
// OUT: float scores[B*H*W]; int32 labels[B*H*W]; int32 bad; int32 value_mismatches
//     (check_values: the staged values against the per-pixel formula of the generic kernel,
//     bit for bit; -1 when not checked).
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda/tile_math.h"

using namespace cbda::tile;

namespace {

struct Input {
  int B, C, h, w, H, W, R, heur, dtype, check_values;
  uint32_t seed_hash;
  std::vector<int64_t> ids;
  std::vector<unsigned char> logits;
};

template <typename T>
void read(FILE* f, T* v, size_t n = 1) {
  if (std::fread(v, sizeof(T), n, f) != n) {
    std::fprintf(stderr, "short input\n");
    std::exit(2);
  }
}

// The generic kernel's value at one pixel and class (common.cuh: make_tap, tap_value).
template <typename T>
float per_pixel_value(const T* plane, const Geom& g, int y, int x) {
  const AxisTap ty = axis_tap(y, g.h, g.rh), tx = axis_tap(x, g.w, g.rw);
  const int64_t o00 = static_cast<int64_t>(ty.lo) * g.w + tx.lo, o01 = o00 + tx.step;
  const int64_t o10 = o00 + static_cast<int64_t>(ty.step) * g.w, o11 = o10 + tx.step;
  const float top = blend(tx.l0, load_elem(plane + o00), tx.l1, load_elem(plane + o01));
  const float bot = blend(tx.l0, load_elem(plane + o10), tx.l1, load_elem(plane + o11));
  return blend(ty.l0, top, ty.l1, bot);
}

bool same_value(float a, float b) { return a == b || (a != a && b != b); }  // -0 == +0, NaN == NaN

template <int C, int R, bool kPointwise, typename T>
void run(const Input& in, float* scores, int32_t* labels, int* bad_out, int* mismatches) {
  constexpr int WT = kTW + 2 * R, NT = (kTH + 2 * R) * WT;
  Geom g{in.H, in.W, in.h, in.w, in.C, R, 0.f, 0.f, 0, 0};
  g.rh = in.H > 1 ? static_cast<float>(in.h - 1) / static_cast<float>(in.H - 1) : 0.f;
  g.rw = in.W > 1 ? static_cast<float>(in.w - 1) / static_cast<float>(in.W - 1) : 0.f;
  stage_extent(g);
  std::vector<Vec4> buf((staged_floats(g) + 3) / 4);  // the kernel's dynamic shared memory
  std::vector<Tab> tab(kColTab + WT);
  const Smem s = smem_view(reinterpret_cast<float*>(buf.data()), tab.data(), g);
  float* hrow = s.hrow;
  const float inv_lnc = 1.0f / std::log(static_cast<float>(in.C));
  bool bad = false;
  const int64_t img_elems = static_cast<int64_t>(in.C) * in.h * in.w;
  for (int b = 0; b < in.B; ++b) {
    const T* img = reinterpret_cast<const T*>(in.logits.data()) + b * img_elems;
    const PixelParams pp{in.heur, inv_lnc, in.seed_hash, in.ids[b]};
    for (int y0 = 0; y0 < in.H; y0 += kTH) {
      for (int x0 = 0; x0 < in.W; x0 += kTW) {
        // poison the staged tiles: a read of something no phase wrote shows up as NaN
        for (auto& v : buf) v = Vec4{NAN, NAN, NAN, NAN};
        for (int tid = 0; tid < kThreads; ++tid) phase_tables<C, R>(tid, g, y0, x0, s);
        for (int tid = 0; tid < kThreads; ++tid) bad |= phase_raw<C>(tid, g, img, y0, x0, R, s);
        for (int tid = 0; tid < kThreads; ++tid) phase_rows<C, R>(tid, g, s);
        for (int tid = 0; tid < kThreads; ++tid) bad |= phase_pixels<C, R, kPointwise>(tid, g, y0, x0, pp, s);
        for (int tid = 0; tid < kThreads; ++tid) {
          for (int k = 0; k < kOutPerThread; ++k) {
            const OutPixel o = output_pixel<R, kPointwise>(tid, k, g, y0, x0, -pp.inv_lnc, s.px);
            if (!o.inside) continue;
            const int64_t at = static_cast<int64_t>(b) * in.H * in.W + o.pix;
            scores[at] = o.score;
            labels[at] = o.label;
          }
        }
        if (in.check_values) {  // every staged value of the tile and its halo, every class
          for (int i = 0; i < NT; ++i) {
            const int hy = i / WT, hx = i % WT, gy = y0 - R + hy, gx = x0 - R + hx;
            if (gy < 0 || gy >= in.H || gx < 0 || gx >= in.W) continue;
            const Tab t = s.rows[hy];
            for (int c = 0; c < in.C; ++c) {
              const int cp = padded(in.C);
              const float staged = ffma(t.l0, hrow[t.first + hx * cp + c], fmul(t.l1, hrow[t.second + hx * cp + c]));
              const float want = per_pixel_value(img + static_cast<int64_t>(c) * in.h * in.w, g, gy, gx);
              *mismatches += same_value(staged, want) ? 0 : 1;
            }
          }
        }
      }
    }
  }
  *bad_out = bad ? 1 : 0;
}

template <int C, typename T>
void dispatch_r(const Input& in, float* s, int32_t* l, int* bad, int* mm) {
  if (pointwise_variant(in.heur, in.R)) run<C, 0, true, T>(in, s, l, bad, mm);
  else if (in.R == 1) run<C, 1, false, T>(in, s, l, bad, mm);
  else run<C, 2, false, T>(in, s, l, bad, mm);
}

template <typename T>
void dispatch_c(const Input& in, float* s, int32_t* l, int* bad, int* mm) {
  if (in.C == 19) dispatch_r<19, T>(in, s, l, bad, mm);  // the kernel's specialisations
  else if (in.C == 16) dispatch_r<16, T>(in, s, l, bad, mm);
  else dispatch_r<0, T>(in, s, l, bad, mm);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
    return 2;
  }
  FILE* f = std::fopen(argv[1], "rb");
  if (f == nullptr) return 2;
  Input in;
  int32_t hdr[10];
  read(f, hdr, 10);
  in.B = hdr[0]; in.C = hdr[1]; in.h = hdr[2]; in.w = hdr[3]; in.H = hdr[4]; in.W = hdr[5];
  in.R = hdr[6]; in.heur = hdr[7]; in.dtype = hdr[8]; in.check_values = hdr[9];
  read(f, &in.seed_hash);
  float err[4];
  read(f, err, 4);
  host_fast_error = HostFastError{err[0], err[1], err[2], err[3]};
  in.ids.resize(in.B);
  read(f, in.ids.data(), in.B);
  const size_t elem = in.dtype == 0 ? 4 : 2;
  in.logits.resize(static_cast<size_t>(in.B) * in.C * in.h * in.w * elem);
  read(f, in.logits.data(), in.logits.size());
  std::fclose(f);
  if (in.C < 2 || in.C > kMaxClasses || in.R < 0 || in.R > kMaxRadius) return 2;

  const size_t n = static_cast<size_t>(in.B) * in.H * in.W;
  std::vector<float> scores(n, NAN);
  std::vector<int32_t> labels(n, -1);
  int bad = 0, mismatches = in.check_values ? 0 : -1;
  switch (in.dtype) {
    case 0: dispatch_c<float>(in, scores.data(), labels.data(), &bad, &mismatches); break;
    case 1: dispatch_c<Bf16>(in, scores.data(), labels.data(), &bad, &mismatches); break;
    default: dispatch_c<F16>(in, scores.data(), labels.data(), &bad, &mismatches); break;
  }
  FILE* o = std::fopen(argv[2], "wb");
  if (o == nullptr) return 2;
  std::fwrite(scores.data(), sizeof(float), n, o);
  std::fwrite(labels.data(), sizeof(int32_t), n, o);
  std::fwrite(&bad, sizeof(int), 1, o);
  std::fwrite(&mismatches, sizeof(int), 1, o);
  std::fclose(o);
  return 0;
}
