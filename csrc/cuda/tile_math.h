// The per-tile arithmetic of the fused CUDA scoring pass (scores.cu, tile_kernel), written
// once as __host__ __device__ code: the kernel runs it, and tests/test_cuda_host_math.py
// compiles the same header on the host (g++) and runs it thread by thread against the
// reference, since no GPU is available where the tests run. Plain C++17 outside the
// `#ifdef __CUDA_ARCH__` branches; no CUDA or torch header needed.
//
// Tiling (one block of kThreads threads per kTH x kTW output tile, halo R):
//   A  tables   per halo row / column: the bilinear taps (PyTorch's align_corners=True
//               arithmetic), as offsets into the staged tiles, computed once per row/column;
//   B  raw      the low-res logits the tile touches, all classes, as float (any dtype),
//               checked for NaN/+inf once per element: the only global reads of the logits;
//   C  rows     horizontally interpolated low-res rows ("hrow", one per staged low-res row
//               and halo column, all classes), plus one row of zeros;
//   D  pixels   per halo pixel: the vertical blend of two hrow values per class, argmax,
//               softmax, entropy (one ex2 and one lg2 per class, one reciprocal per pixel)
//               -> (value, one-hot label mask) in shared memory;
//   E  window   per output pixel: static loads of the (2R+1)^2 window; the window's class
//               counts by bit-sliced adders over the one-hot masks, impurity from a
//               precomputed table of q ln(q + eps), uncertainty = window mean.
// Shared-memory layouts keep a pixel's classes contiguous, padded to 4m words with m odd (20 at
// C = 19), so the per-class accesses of B, C and D are 16-byte vector loads/stores (4 classes
// each) at immediate offsets from one per-pixel base, and the 8 lanes of a quarter-warp at
// consecutive pixels hit distinct banks.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/mix32.h"  // CBDA_HOST_DEVICE

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace cbda {
namespace tile {

constexpr int kTH = 32, kTW = 32, kThreads = 128;
constexpr int kOutPerThread = kTH * kTW / kThreads;
constexpr int kMaxClasses = 32;  // one-hot label masks are 32-bit words
constexpr int kMaxRadius = 2;
constexpr int kMaxWindow = (2 * kMaxRadius + 1) * (2 * kMaxRadius + 1);
constexpr float kLogEps = 1e-6f;  // RIPU's eps inside every ln(p + eps)
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;
static_assert(kTW == 32, "phase E: one warp = one tile row (32 lanes)");
static_assert(kTH * kTW % kThreads == 0, "whole output pixels per thread");

// ---- float primitives: IEEE round-to-nearest ops the compiler may not contract, and the
// SFU approximations. On the host the approximations are the accurate libm functions,
// optionally perturbed by a relative/absolute error (host_fast_error) so that the tests can
// show the scores stay within tolerance under the hardware's documented error bounds.
#ifndef __CUDA_ARCH__
struct HostFastError {
  float ex2_rel = 0.f;  // ex2.approx: relative error
  float lg2_abs = 0.f;  // lg2.approx: absolute error (arguments near 1)
  float lg2_rel = 0.f;  // lg2.approx: relative error (elsewhere)
  float rcp_rel = 0.f;  // rcp.approx: relative error
};
inline HostFastError host_fast_error;

inline float host_perturb(float y, float x, float rel, float abs_err) {
  if (rel == 0.f && abs_err == 0.f) return y;
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const float s = (mix32(u) & 1u) ? 1.f : -1.f;  // a deterministic sign per argument
  return y + s * (abs_err + rel * std::fabs(y));
}
#endif

CBDA_HOST_DEVICE float fmul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

CBDA_HOST_DEVICE float fadd(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

CBDA_HOST_DEVICE float ffma(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// 2^x: one MUFU.EX2 (flush-to-zero: a result below 2^-126 becomes 0, a probability that
// adds nothing to the sums it enters).
CBDA_HOST_DEVICE float fast_ex2(float x) {
#ifdef __CUDA_ARCH__
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return host_perturb(std::exp2(x), x, host_fast_error.ex2_rel, 0.f);
#endif
}

// log2(x) for x >= 1e-6 (never subnormal): one MUFU.LG2.
CBDA_HOST_DEVICE float fast_lg2(float x) {
#ifdef __CUDA_ARCH__
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return host_perturb(std::log2(x), x, host_fast_error.lg2_rel, host_fast_error.lg2_abs);
#endif
}

// 1/x for x >= 1: one MUFU.RCP.
CBDA_HOST_DEVICE float fast_rcp(float x) {
#ifdef __CUDA_ARCH__
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return host_perturb(1.0f / x, x, host_fast_error.rcp_rel, 0.f);
#endif
}

CBDA_HOST_DEVICE int popc(uint32_t v) {
#ifdef __CUDA_ARCH__
  return __popc(v);
#else
  return __builtin_popcount(v);
#endif
}

// index of the single set bit of a one-hot mask
CBDA_HOST_DEVICE int label_of(uint32_t onehot) {
#ifdef __CUDA_ARCH__
  return 31 - __clz(onehot);
#else
  return 31 - __builtin_clz(onehot);
#endif
}

// ---- logits elements: float32 / bfloat16 / float16 by their bits ------------------------
struct Bf16 { uint16_t bits; };
struct F16 { uint16_t bits; };

CBDA_HOST_DEVICE float bits_to_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

#ifndef __CUDA_ARCH__
inline float host_half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  if (exp == 0x1Fu) return bits_to_float(sign | 0x7F800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    int e = -1;  // normalise the subnormal
    do { ++e; man <<= 1; } while ((man & 0x400u) == 0);
    return bits_to_float(sign | ((112u - static_cast<uint32_t>(e)) << 23) | ((man & 0x3FFu) << 13));
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}
#endif

CBDA_HOST_DEVICE float load_elem(const float* p) {
#ifdef __CUDA_ARCH__
  return __ldg(p);
#else
  return *p;
#endif
}
CBDA_HOST_DEVICE float load_elem(const Bf16* p) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(static_cast<uint32_t>(__ldg(reinterpret_cast<const unsigned short*>(p))) << 16);
#else
  return bits_to_float(static_cast<uint32_t>(p->bits) << 16);
#endif
}
CBDA_HOST_DEVICE float load_elem(const F16* p) {
#ifdef __CUDA_ARCH__
  return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
#else
  return host_half_to_float(p->bits);
#endif
}

// NaN or +inf (the logits errors); -inf, a masked class, passes. One FSETP.GTU.
CBDA_HOST_DEVICE bool nan_or_pinf(float v) { return !(v <= 3.402823466e38f); }

// ---- bilinear taps: PyTorch's upsample_bilinear2d (align_corners=True) arithmetic ----------
// source coordinate r = scale * dst in float (scale = float(in - 1) / (out - 1)), lo = (int)r,
// the second tap lo + step (step 0 at the last source index), weights l1 = r - lo, l0 = 1 - l1.
// l1 == 0 exactly iff l0 == 1, and l0 is never 0 (l1 < 1 and 1 - l1 is exact for l1 >= 0.5).
struct AxisTap {
  int lo, step;
  float l0, l1;
};

CBDA_HOST_DEVICE AxisTap axis_tap(int dst, int in, float scale) {
  AxisTap t;
  const float r = fmul(scale, static_cast<float>(dst));
  t.lo = static_cast<int>(r);
  t.step = (t.lo < in - 1) ? 1 : 0;
  t.l1 = fadd(r, -static_cast<float>(t.lo));
  t.l0 = fadd(1.0f, -t.l1);
  return t;
}

// The interpolation step of PyTorch's value h0l*(w0l*a + w1l*b) + h1l*(w0l*c + w1l*d), with
// the fma placement nvcc's contraction gives it, except that a tap of weight 0 contributes
// nothing: a masked class (-inf) of weight 0 then stays out of the value (0 * -inf = NaN).
CBDA_HOST_DEVICE float blend(float wa, float a, float wb, float b) {
  const float only_b = fmul(wb, b);
  const float both = ffma(wa, a, only_b);
  return wb == 0.f ? fmul(wa, a) : (wa == 0.f ? only_b : both);
}

// blend() for weights of one AxisTap (wa = l0, wb = l1): wa is never 0, and wa == 1 when
// wb == 0, so blend() reduces to this (bit for bit; tests/test_cuda_host_math.py checks).
CBDA_HOST_DEVICE float blend_tap(float wa, float a, float wb, float b) {
  const float both = ffma(wa, a, fmul(wb, b));
  return wb == 0.f ? a : both;
}

// ---- staged-tile geometry -------------------------------------------------------------------
// Every tile of a launch stages the same number of low-res rows (nl) and columns (nlx): the
// most any tile needs, starting at the tile's first tap (rows past the image are clamped).
struct Geom {
  int H, W, h, w, C, R;
  float rh, rw;
  int nl, nlx;
};

CBDA_HOST_DEVICE int halo_h(int R) { return kTH + 2 * R; }
CBDA_HOST_DEVICE int halo_w(int R) { return kTW + 2 * R; }

CBDA_HOST_DEVICE int imin(int a, int b) { return a < b ? a : b; }
CBDA_HOST_DEVICE int imax(int a, int b) { return a > b ? a : b; }

// First staged low-res index of the tile starting at output index t0, and the count it needs.
CBDA_HOST_DEVICE int first_src(int t0, int R, int in, float scale) { return axis_tap(imax(t0 - R, 0), in, scale).lo; }
CBDA_HOST_DEVICE int src_span(int t0, int tile, int R, int out, int in, float scale) {
  const int last = imin(t0 + tile + R - 1, out - 1);
  const AxisTap b = axis_tap(last, in, scale);
  return b.lo + b.step - first_src(t0, R, in, scale) + 1;
}

// nl / nlx of a launch: the maximum over its tiles (host side, before the launch).
inline void stage_extent(Geom& g) {
  g.nl = 0;
  for (int y0 = 0; y0 < g.H; y0 += kTH) g.nl = imax(g.nl, src_span(y0, kTH, g.R, g.H, g.h, g.rh));
  g.nlx = 0;
  for (int x0 = 0; x0 < g.W; x0 += kTW) g.nlx = imax(g.nlx, src_span(x0, kTW, g.R, g.W, g.w, g.rw));
}

// Dynamic shared memory of a tile (floats): hrow [nl + 1][halo_w][padded(C)] (the last row
// zeros) and raw [nl][nlx][padded(C)].
CBDA_HOST_DEVICE constexpr int padded(int c) { return ((c + 3) & ~3) | 4; }  // 4m, m odd: see the top
CBDA_HOST_DEVICE int hrow_floats(const Geom& g) { return (g.nl + 1) * halo_w(g.R) * padded(g.C); }
CBDA_HOST_DEVICE int raw_floats(const Geom& g) { return g.nl * g.nlx * padded(g.C); }

// 4 classes of a pixel (16-byte aligned in shared memory)
#if defined(__CUDACC__)
using Vec4 = float4;
#else
struct alignas(16) Vec4 {
  float x, y, z, w;
};
#endif
CBDA_HOST_DEVICE float& lane(Vec4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }
CBDA_HOST_DEVICE float lane(const Vec4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// Per halo row: hrow offsets (floats) of the two taps and their weights; per halo column:
// raw offsets (floats, within a staged row) and weights.
struct Tab {
  int first, second;
  float l0, l1;
};
struct PixelOut {  // per halo pixel after phase D
  float val;       // ripu: entropy / ln C; pointwise heuristics: the score
  uint32_t mask;   // 1 << pseudo label; 0 outside the image
};

// Where a tile's staged data live (shared memory on the device, arrays in the host harness).
struct Smem {
  float* hrow;
  float* raw;
  Tab* rows;
  Tab* cols;
  PixelOut* px;
};

constexpr int kColTab = 64;  // phase A: column table entries start here (Tab tab[kColTab + WT])

// One buffer of staged_floats() floats (16-byte aligned) holds hrow, then raw; the pixel
// records of phase D reuse raw's space (raw is dead after phase C, a barrier between).
CBDA_HOST_DEVICE int staged_floats(const Geom& g) {
  const int px_floats = 2 * halo_h(g.R) * halo_w(g.R);
  return hrow_floats(g) + imax(raw_floats(g), px_floats);
}

CBDA_HOST_DEVICE Smem smem_view(float* buf, Tab* tab, const Geom& g) {
  float* after = buf + hrow_floats(g);
  return Smem{buf, after, tab, tab + kColTab, reinterpret_cast<PixelOut*>(after)};
}

// Classes as a template constant (C > 0) or at run time (C == 0, any count <= kMaxClasses,
// loops predicated to kMaxClasses).
template <int C>
struct Classes {
  static constexpr int kUnroll = C > 0 ? C : kMaxClasses;
  static constexpr int kQuads = (kUnroll + 3) / 4;
  CBDA_HOST_DEVICE static int count(int runtime) { return C > 0 ? C : runtime; }
  CBDA_HOST_DEVICE static int pad(int runtime) { return padded(C > 0 ? C : runtime); }
  CBDA_HOST_DEVICE static bool has(int c, int runtime) { return c < (C > 0 ? C : runtime); }
};

// ---- phase A: tap tables and the zero row -------------------------------------------------
// Threads [0, HT) fill the row table, threads [kColTab, kColTab + WT) the column table, with
// one code path (an axis is an axis). Halo rows/columns past the image get a valid clamped
// entry; phase D skips their pixels.
static_assert(kColTab >= kTH + 2 * kMaxRadius && kColTab + kTW + 2 * kMaxRadius <= kThreads, "table threads");

template <int C, int R>
CBDA_HOST_DEVICE void phase_tables(int tid, const Geom& g, int y0, int x0, Smem s) {
  constexpr int HT = kTH + 2 * R, WT = kTW + 2 * R;
  const int cp = Classes<C>::pad(g.C);
  const int row_floats = WT * cp;
  const bool row = tid < HT;
  const int j = row ? tid : tid - kColTab;
  if (row || (j >= 0 && j < WT)) {
    const int t0 = row ? y0 : x0, out = row ? g.H : g.W, in = row ? g.h : g.w;
    const float scale = row ? g.rh : g.rw;
    const int unit = row ? row_floats : cp;  // hrow rows / raw columns
    const int s0 = first_src(t0, R, in, scale);
    const AxisTap a = axis_tap(imin(imax(t0 - R + j, 0), out - 1), in, scale);
    Tab t;
    t.first = (a.lo - s0) * unit;
    // a row tap of weight 0 reads the zero row, so 0 * (-inf) never happens (blend_tap
    // handles the columns)
    t.second = (row && a.l1 == 0.f) ? g.nl * row_floats : (a.lo + a.step - s0) * unit;
    t.l0 = a.l0;
    t.l1 = a.l1;
    (row ? s.rows : s.cols)[j] = t;
  }
  float* zero = s.hrow + g.nl * row_floats;
#pragma unroll 1
  for (int i = tid; i < row_floats; i += kThreads) zero[i] = 0.f;
}

// ---- phase B: the low-res logits of the tile, as float; returns "a NaN/+inf was read" ------
template <int C, typename T>
CBDA_HOST_DEVICE bool phase_raw(int tid, const Geom& g, const T* img, int y0, int x0, int R, Smem s) {
  constexpr int NQ = Classes<C>::kQuads;
  const int nc = Classes<C>::count(g.C), cp = Classes<C>::pad(g.C);
  const int lr0 = first_src(y0, R, g.h, g.rh), lx0 = first_src(x0, R, g.w, g.rw);
  const int plane = g.h * g.w;
  bool bad = false;
  for (int it = tid; it < g.nl * g.nlx; it += kThreads) {
    const int lr = it / g.nlx, lx = it - lr * g.nlx;
    const int off = imin(lr0 + lr, g.h - 1) * g.w + imin(lx0 + lx, g.w - 1);
    Vec4* dst = reinterpret_cast<Vec4*>(s.raw + it * cp);
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
      if (C > 0 || 4 * q < nc) {
        Vec4 v4;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int c = 4 * q + i;
          float v = 0.f;  // padding
          if (Classes<C>::has(c, nc)) {
            v = load_elem(img + (c * plane + off));
            bad |= nan_or_pinf(v);
          }
          lane(v4, i) = v;
        }
        dst[q] = v4;
      }
    }
  }
  return bad;
}

// ---- phase C: horizontally interpolated rows ---------------------------------------------
template <int C, int R>
CBDA_HOST_DEVICE void phase_rows(int tid, const Geom& g, Smem s) {
  constexpr int WT = kTW + 2 * R, NQ = Classes<C>::kQuads;
  const int nc = Classes<C>::count(g.C), cp = Classes<C>::pad(g.C);
  for (int it = tid; it < g.nl * WT; it += kThreads) {
    const int lr = it / WT, j = it - lr * WT;
    const Tab t = s.cols[j];
    const float* row = s.raw + lr * g.nlx * cp;
    const Vec4* a = reinterpret_cast<const Vec4*>(row + t.first);
    const Vec4* b = reinterpret_cast<const Vec4*>(row + t.second);
    Vec4* dst = reinterpret_cast<Vec4*>(s.hrow + (lr * WT + j) * cp);
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
      if (C > 0 || 4 * q < nc) {
        const Vec4 a4 = a[q], b4 = b[q];
        Vec4 o;
#pragma unroll
        for (int i = 0; i < 4; ++i) lane(o, i) = blend_tap(t.l0, lane(a4, i), t.l1, lane(b4, i));
        dst[q] = o;
      }
    }
  }
}

// ---- the impurity table ---------------------------------------------------------------------
// T[n][k] = q ln(q + eps) with q = k / n, as the reference computes it in float32 (q rounded,
// eps added in float, a correctly rounded log), for windows of n <= 25 pixels; inv[n] = 1/n.
constexpr double cx_ln(double x) {  // x > 0; ~1e-16 relative
  int e = 0;
  while (x > 1.5) { x /= 2; ++e; }
  while (x < 0.75) { x *= 2; --e; }
  const double s = (x - 1) / (x + 1), s2 = s * s;
  double term = s, sum = 0;
  for (int k = 1; k < 60 && (term > 1e-30 || term < -1e-30); k += 2) {  // no subnormals: constant evaluation
    sum += term / k;
    term *= s2;
  }
  return 2 * sum + e * 0.693147180559945309417232121458;
}

struct ImpurityTable {
  float t[kMaxWindow + 1][kMaxWindow + 1];
  float inv[kMaxWindow + 1];
};

constexpr ImpurityTable make_impurity_table() {
  ImpurityTable tab{};
  for (int n = 1; n <= kMaxWindow; ++n) {
    tab.inv[n] = 1.0f / static_cast<float>(n);
    for (int k = 1; k <= n; ++k) {
      const float q = static_cast<float>(k) / static_cast<float>(n);
      const float l = static_cast<float>(cx_ln(static_cast<double>(q + kLogEps)));
      tab.t[n][k] = q * l;
    }
  }
  return tab;
}

inline constexpr ImpurityTable kImpurityHost = make_impurity_table();
#if defined(__CUDACC__)
static __constant__ ImpurityTable kImpurityDev = kImpurityHost;
#endif

CBDA_HOST_DEVICE const ImpurityTable& impurity_table() {
#ifdef __CUDA_ARCH__
  return kImpurityDev;
#else
  return kImpurityHost;
#endif
}

// ---- phase D: per-pixel softmax statistics -------------------------------------------------
struct Stats {
  int label;
  float m;        // the largest value (-inf: every class masked, the logits error)
  float ent;      // -sum p ln(p + eps), nats
  float p1, p2;   // largest / second largest probability (kWithTop2 only)
};

// Values of one pixel: v = fma(l0, top, l1 * bot) per class, bot the zero row when l1 == 0
// (bit for bit blend(l0, top, l1, bot)). Entropy without a division or a log per class:
//   p = e / S, e = 2^((v - m) log2 e), S = sum e;  -sum p ln(p + eps)
//   = ln S - (1/S) sum e ln(e + eps S)   (sum p = 1),
// one ex2 and one lg2 per class, one rcp and one lg2 per pixel.
template <int C, bool kWithTop2>
CBDA_HOST_DEVICE Stats pixel_stats(const float* top, const float* bot, float l0, float l1, int nc) {
  constexpr int CU = Classes<C>::kUnroll, NQ = Classes<C>::kQuads;
  float v[4 * NQ];
#pragma unroll
  for (int q = 0; q < NQ; ++q) {
    if (C > 0 || 4 * q < nc) {
      const Vec4 t4 = reinterpret_cast<const Vec4*>(top)[q], b4 = reinterpret_cast<const Vec4*>(bot)[q];
#pragma unroll
      for (int i = 0; i < 4; ++i) v[4 * q + i] = ffma(l0, lane(t4, i), fmul(l1, lane(b4, i)));
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) v[4 * q + i] = 0.f;
    }
  }
#pragma unroll
  for (int c = 0; c < CU; ++c) v[c] = (C > 0 || c < nc) ? v[c] : 0.f;
  Stats st;
  float m = v[0], m2 = -INFINITY;
  int lab = 0;
#pragma unroll
  for (int c = 1; c < CU; ++c) {
    if (C > 0 || c < nc) {
      if (kWithTop2) {
        if (v[c] > m) { m2 = m; m = v[c]; lab = c; }
        else if (v[c] > m2) { m2 = v[c]; }
      } else if (v[c] > m) {
        m = v[c];
        lab = c;
      }
    }
  }
  const float mlog = fmul(m, kLog2e);
  float sum = 0.f;
#pragma unroll
  for (int c = 0; c < CU; ++c) {
    v[c] = (C > 0 || c < nc) ? fast_ex2(ffma(v[c], kLog2e, -mlog)) : 0.f;
    sum = fadd(sum, v[c]);
  }
  const float es = fmul(sum, kLogEps);
  float acc = 0.f;
#pragma unroll
  for (int c = 0; c < CU; ++c)
    if (C > 0 || c < nc) acc = ffma(v[c], fast_lg2(fadd(v[c], es)), acc);
  const float rs = fast_rcp(sum);
  st.label = lab;
  st.m = m;
  st.ent = fmul(kLn2, ffma(-acc, rs, fast_lg2(sum)));
  if (kWithTop2) {
    st.p1 = fmul(fast_ex2(ffma(m, kLog2e, -mlog)), rs);
    st.p2 = fmul(fast_ex2(ffma(m2, kLog2e, -mlog)), rs);
  } else {
    st.p1 = st.p2 = 0.f;
  }
  return st;
}

// Heuristics of phase D (kernels.h numbering).
enum : int { kHeurRipu = 0, kHeurEntropy = 2, kHeurMargin = 3, kHeurLeastConfidence = 4, kHeurRandom = 5,
             kHeurEntropyRaw = 6 };

// seeded random heuristic: the mix32 chain of cbda.scores.random_scores (seed_hash = mix32(seed))
CBDA_HOST_DEVICE float random_score(uint32_t seed_hash, int64_t image_id, int64_t pix) {
  const uint64_t id = static_cast<uint64_t>(image_id);
  uint32_t hsh = mix32(static_cast<uint32_t>(id >> 32) ^ seed_hash);
  hsh = mix32(static_cast<uint32_t>(id & 0xFFFFFFFFull) ^ hsh);
  hsh = mix32(static_cast<uint32_t>(static_cast<uint64_t>(pix) & 0xFFFFFFFFull) ^ hsh);
  return static_cast<float>(hsh >> 8) * (1.0f / 16777216.0f);
}

struct PixelParams {
  int heur;            // kHeurRipu for the ripu kernel; any heuristic for the pointwise one
  float inv_lnc;       // 1 / ln C
  uint32_t seed_hash;  // random
  int64_t image_id;    // random
};

// Phase D over the tile and its halo. Returns "a pixel had every class masked".
template <int C, int R, bool kPointwise>
CBDA_HOST_DEVICE bool phase_pixels(int tid, const Geom& g, int y0, int x0, const PixelParams& pp, Smem s) {
  constexpr int HT = kTH + 2 * R, WT = kTW + 2 * R, NT = HT * WT;
  const int nc = Classes<C>::count(g.C), cp = Classes<C>::pad(g.C);
  bool bad = false;
  for (int i = tid; i < NT; i += kThreads) {
    const int hy = i / WT, hx = i - hy * WT;
    const int gy = y0 - R + hy, gx = x0 - R + hx;
    PixelOut out{0.f, 0u};
    if (gy >= 0 && gy < g.H && gx >= 0 && gx < g.W) {
      const Tab t = s.rows[hy];
      const Stats st = pixel_stats<C, kPointwise>(s.hrow + t.first + hx * cp, s.hrow + t.second + hx * cp, t.l0, t.l1, nc);
      bad |= st.m == -INFINITY;
      float v = fmul(st.ent, pp.inv_lnc);
      if (kPointwise) {
        switch (pp.heur) {
          case kHeurRipu: {  // r = 0: window_score<0>'s arithmetic, P = -T[1][1] / ln C
            v = fmul(fmul(impurity_table().t[1][1], -pp.inv_lnc), fmul(v, impurity_table().inv[1]));
            break;
          }
          case kHeurEntropyRaw: v = st.ent; break;
          case kHeurMargin: v = fadd(1.0f, -fadd(st.p1, -st.p2)); break;
          case kHeurLeastConfidence: v = fadd(1.0f, -st.p1); break;
          case kHeurRandom: v = random_score(pp.seed_hash, pp.image_id, static_cast<int64_t>(gy) * g.W + gx); break;
          default: break;  // entropy
        }
      }
      out.val = v;
      out.mask = 1u << st.label;
    }
    s.px[i] = out;
  }
  return bad;
}

// ---- phase E: window statistics -------------------------------------------------------------
// Bit-sliced counts: after count_masks, bit c of plane j is bit j of the number of window
// pixels labelled c. R = 1: a carry-save tree of full adders (14 LOP3), else ripple adders.
template <int R>
struct WindowCount {
  static constexpr int WN = (2 * R + 1) * (2 * R + 1);
  static constexpr int NB = WN >= 16 ? 5 : WN >= 8 ? 4 : WN >= 4 ? 3 : WN >= 2 ? 2 : 1;
  uint32_t b[NB];

  CBDA_HOST_DEVICE static void full_add(uint32_t x, uint32_t y, uint32_t z, uint32_t& sum, uint32_t& carry) {
    sum = x ^ y ^ z;
    carry = (x & y) | (z & (x ^ y));
  }

  CBDA_HOST_DEVICE void count(const uint32_t (&m)[WN]) {
    if constexpr (R == 1) {
      uint32_t s0, c0, s1, c1, s2, c2, c3, s4, c4;
      full_add(m[0], m[1], m[2], s0, c0);
      full_add(m[3], m[4], m[5], s1, c1);
      full_add(m[6], m[7], m[8], s2, c2);
      full_add(s0, s1, s2, b[0], c3);           // weight 1 done
      full_add(c0, c1, c2, s4, c4);             // weight 2: c0 c1 c2 c3
      b[1] = s4 ^ c3;
      const uint32_t c5 = s4 & c3;              // weight 4: c4 c5
      b[2] = c4 ^ c5;
      b[3] = c4 & c5;
    } else {
#pragma unroll
      for (int j = 0; j < NB; ++j) b[j] = 0u;
#pragma unroll
      for (int e = 0; e < WN; ++e) {
        uint32_t carry = m[e];
#pragma unroll
        for (int j = 0; j < NB; ++j) {
          const uint32_t t = b[j] & carry;
          b[j] ^= carry;
          carry = t;
        }
      }
    }
  }

  // classes counted exactly k times
  CBDA_HOST_DEVICE uint32_t exactly(int k) const {
    uint32_t r = 0xFFFFFFFFu;
#pragma unroll
    for (int j = 0; j < NB; ++j) r &= ((k >> j) & 1) ? b[j] : ~b[j];
    return r;
  }
};

// Score of output pixel (gy, gx) at px index ci (tile-local, halo included): P * U with
// P = -sum_c q_c ln(q_c + eps) / ln C and U the mean of the entropies over the window.
template <int R>
CBDA_HOST_DEVICE float window_score(const PixelOut* px, int ci, int gy, int gx, int H, int W, float neg_inv_lnc) {
  constexpr int WT = kTW + 2 * R, WN = (2 * R + 1) * (2 * R + 1);
  uint32_t m[WN];
  float sum_u = 0.f;
#pragma unroll
  for (int dy = -R; dy <= R; ++dy) {
#pragma unroll
    for (int dx = -R; dx <= R; ++dx) {
      const PixelOut p = px[ci + dy * WT + dx];
      m[(dy + R) * (2 * R + 1) + dx + R] = p.mask;
      sum_u = fadd(sum_u, p.val);  // 0 outside the image
    }
  }
  // in-image window size; pixels past the image (their score is not used) clamp to >= 1
  const int ny = imax(imin(gy + R, H - 1) - imax(gy - R, 0) + 1, 1);
  const int nx = imax(imin(gx + R, W - 1) - imax(gx - R, 0) + 1, 1);
  const int n = ny * nx;
  const ImpurityTable& tab = impurity_table();
  WindowCount<R> wc;
  wc.count(m);
  float acc = 0.f;
  if constexpr (R == 1) {
    // counts 1-4 by class masks; a count >= 5 (more than half of 9) has at most one class,
    // whose count is read from the planes directly (T[n][0] = 0 when there is none)
#pragma unroll
    for (int k = 1; k <= 4; ++k) acc = ffma(static_cast<float>(popc(wc.exactly(k))), tab.t[n][k], acc);
    const uint32_t big = wc.b[3] | (wc.b[2] & (wc.b[1] | wc.b[0]));
    const int kbig = ((wc.b[0] & big) != 0u ? 1 : 0) | ((wc.b[1] & big) != 0u ? 2 : 0) |
                     ((wc.b[2] & big) != 0u ? 4 : 0) | ((wc.b[3] & big) != 0u ? 8 : 0);
    acc = fadd(acc, tab.t[n][kbig]);
  } else {
#pragma unroll
    for (int k = 1; k <= WN; ++k) acc = ffma(static_cast<float>(popc(wc.exactly(k))), tab.t[n][k], acc);
  }
  return fmul(fmul(acc, neg_inv_lnc), fmul(sum_u, tab.inv[n]));
}

// One output pixel of phase E: thread tid's k-th pixel (a warp is one tile row), its
// pseudo label and score. Pixels past the image get a valid label and a score to ignore.
struct OutPixel {
  int gy, gx, pix;
  bool inside;
  int label;
  float score;
};

template <int R, bool kPointwise>
CBDA_HOST_DEVICE OutPixel output_pixel(int tid, int k, const Geom& g, int y0, int x0, float neg_inv_lnc,
                                       const PixelOut* px) {
  constexpr int WT = kTW + 2 * R;
  OutPixel o;
  const int tx = tid % kTW, ty = tid / kTW + k * (kThreads / kTW);
  o.gx = x0 + tx;
  o.gy = y0 + ty;
  o.inside = o.gy < g.H && o.gx < g.W;
  o.pix = o.gy * g.W + o.gx;
  const int ci = (ty + R) * WT + tx + R;
  o.label = label_of(px[ci].mask | 1u);  // mask 0 past the image: label 0
  o.score = kPointwise ? px[ci].val : window_score<R>(px, ci, o.gy, o.gx, g.H, g.W, neg_inv_lnc);
  return o;
}

// Which kernel variant scores a call: ripu at r = 1, 2 has window statistics; every other
// heuristic, and ripu at r = 0, is pointwise.
CBDA_HOST_DEVICE bool pointwise_variant(int heur, int R) { return heur != kHeurRipu || R == 0; }

}  // namespace tile
}  // namespace cbda
