// Fused scoring pass (docs/semantics.md, Scores): one block per output tile computes, for the
// tile plus a halo of r, every pixel's pseudo label and entropy, then each output pixel's
// score from its window, and ends with whatever the caller asked for: score/label maps,
// the class histogram (shared-memory counts, one global atomic per class per block), and
// the warp-aggregated compaction of candidate keys (one atomicAdd per warp) for the
// streaming selection. The upsampled logits are never materialised.
//
// Two kernels:
// - tile_kernel (C <= 32, the staged tiles fit in shared memory; every upsampling case):
//   32x32 output tiles, the arithmetic of tile_math.h (phases A-E there). The low-res
//   logits a tile touches are read from global memory once (coalesced, any dtype, checked
//   for NaN/+inf), interpolated horizontally once per low-res row and halo column, and
//   vertically per pixel from shared memory; one ex2 and one lg2 per class and pixel;
//   window statistics by bit-sliced class counts. Specialised for C = 19 (Cityscapes,
//   GTAV) and C = 16 (SYNTHIA); any other C <= 32 runs the same code predicated to 32.
// - tile_kernel_generic (any C, any scale): 16x32 tiles, each pixel reads its 4 low-res taps
//   per class straight from the (B, C, h, w) tensor (neighbours share them through L1/L2).
// Both give the same pseudo labels (the same interpolation arithmetic, bit for bit).
#include "common.cuh"
#include "tile_math.h"

namespace cbda {
namespace cuda {
namespace {

constexpr int kTH = 16, kTW = 32, kThreads = 256, kHistMax = 1024;  // generic kernel's tile
// at least 3 blocks (24 warps) per SM: a register cap of 85 a thread. Without it ptxas picked
// 64 registers for tile_kernel<T, 32, 1> on sm_90 and spilled 8 bytes (compile-checked in CI)
constexpr int kMinBlocks = 3;
constexpr uint16_t kOutside = 0xFFFF;
static_assert(kTH * kTW % kThreads == 0, "whole pixels per thread");
static_assert(kTW == 32, "one warp = one tile row: a warp's candidates share a slot");

struct TileParams {
  LogitsView lg;
  int heur;
  uint32_t seed_hash;
  const int64_t* image_ids;
  float lnc;
  float rh, rw;
  float* out_scores;
  int64_t* out_labels;
  unsigned long long* class_counts;
  unsigned int* bad_flag;  // set to 1 on NaN/+inf logits or a pixel with no finite class
  bool select;
  SelectArgs sel;
};

template <typename T, int CMAX, int R>
__global__ void __launch_bounds__(kThreads, kMinBlocks) tile_kernel_generic(const TileParams p) {
  constexpr int HT = kTH + 2 * R, WT = kTW + 2 * R, NT = HT * WT;
  __shared__ float s_val[NT];        // ripu: entropy / ln C; else the pointwise score
  __shared__ uint16_t s_lab[NT];     // pseudo label, kOutside beyond the image
  __shared__ unsigned int s_hist[kHistMax];

  const int tid = threadIdx.x;
  const int64_t b = blockIdx.z;
  const int64_t H = p.lg.H, W = p.lg.W, C = p.lg.C, h = p.lg.h, w = p.lg.w;
  const int64_t y0 = static_cast<int64_t>(blockIdx.y) * kTH;
  const int64_t x0 = static_cast<int64_t>(blockIdx.x) * kTW;
  const bool shared_hist = p.class_counts != nullptr && C <= kHistMax;
  if (shared_hist)
    for (int i = tid; i < C; i += kThreads) s_hist[i] = 0u;

  const int64_t plane = h * w;
  const T* img = static_cast<const T*>(p.lg.data) + b * C * plane;
  const bool need_softmax = p.heur != kRandom;

  // Phase 1: per-pixel statistics of the tile and its halo.
  for (int i = tid; i < NT; i += kThreads) {
    const int64_t gy = y0 + i / WT - R, gx = x0 + i % WT - R;
    if (gy < 0 || gy >= H || gx < 0 || gx >= W) {
      s_lab[i] = kOutside;
      s_val[i] = 0.f;
      continue;
    }
    const Tap tap = make_tap(gy, gx, h, w, p.rh, p.rw);
    const PixelStats st = pixel_stats<T, CMAX>(img, plane, static_cast<int>(C), tap, need_softmax);
    float v;
    switch (p.heur) {
      case kRipu:
      case kEntropy: v = st.ent / p.lnc; break;
      case kEntropyRaw: v = st.ent; break;
      case kMargin: v = 1.0f - (st.p1 - st.p2); break;
      case kLeastConfidence: v = 1.0f - st.p1; break;
      default: v = random_score(p.seed_hash, p.image_ids[b], gy * W + gx); break;
    }
    s_val[i] = v;
    s_lab[i] = static_cast<uint16_t>(st.label);
    if (st.bad) *p.bad_flag = 1u;  // benign race: every writer stores the same value
  }
  __syncthreads();

  // Phase 2: one or two output pixels per thread; a warp is one tile row.
  constexpr int WN = (2 * R + 1) * (2 * R + 1);
  const Cutoff cut = p.select ? load_cutoff(p.sel) : Cutoff{false, 0.f, 0};
#pragma unroll 1
  for (int k = 0; k < kTH * kTW / kThreads; ++k) {
    const int o = tid + k * kThreads;
    const int ty = o / kTW, tx = o % kTW;
    const int64_t gy = y0 + ty, gx = x0 + tx;
    const bool inside = gy < H && gx < W;
    float score = 0.f;
    int label = 0;
    if (inside) {
      const int ci = (ty + R) * WT + tx + R;
      label = s_lab[ci];
      if (p.heur == kRipu) {
        uint16_t lab[WN];
        float sum_u = 0.f;
        int n = 0;
#pragma unroll
        for (int dy = -R; dy <= R; ++dy) {
#pragma unroll
          for (int dx = -R; dx <= R; ++dx) {
            const int j = ci + dy * WT + dx;
            const uint16_t l = s_lab[j];
            lab[(dy + R) * (2 * R + 1) + dx + R] = l;
            if (l != kOutside) {
              sum_u += s_val[j];
              ++n;
            }
          }
        }
        // sum over the distinct classes of the window: each class once, at its first
        // occurrence, with q = count / n (the window is tiny: O(n²) compares in registers)
        float acc = 0.f;
        const float fn = static_cast<float>(n);
#pragma unroll
        for (int e = 0; e < WN; ++e) {
          if (lab[e] == kOutside) continue;
          int cnt = 0;
          bool first = true;
#pragma unroll
          for (int f = 0; f < WN; ++f) {
            if (lab[f] == lab[e]) {
              ++cnt;
              if (f < e) first = false;
            }
          }
          if (first) {
            const float q = static_cast<float>(cnt) / fn;
            acc += q * logf(q + kLogEps);
          }
        }
        const float P = -acc / p.lnc;
        const float U = sum_u / fn;
        score = P * U;
      } else {
        score = s_val[ci];
      }
      const int64_t idx = (b * H + gy) * W + gx;
      if (p.out_scores != nullptr) p.out_scores[idx] = score;
      if (p.out_labels != nullptr) p.out_labels[idx] = label;
      if (p.class_counts != nullptr) {
        if (shared_hist) atomicAdd(&s_hist[label], 1u);
        else atomicAdd(&p.class_counts[label], 1ull);
      }
    }
    if (p.select) {  // block-uniform: every lane reaches the warp vote
      const SelectArgs& s = p.sel;
      bool take = false;
      uint64_t key = 0;
      if (inside && s.whole[b] == 0) {
        const int64_t pix = gy * W + gx;
        if (s.blocked[b * H * W + pix] == 0) {
          const float ws = s.weights != nullptr ? score * s.weights[label] : score;
          if (beats(ws, s.image_ids[b] * H * W + pix, cut)) {
            take = true;
            key = candidate_key(b, ws, pix, s.pixbits);
          }
        }
      }
      const int64_t at = warp_append(take, s.count, s.slot_counts + b);
      if (at >= 0 && at < s.capacity) s.keys[at] = key;
    }
  }

  if (shared_hist) {
    __syncthreads();
    for (int i = tid; i < C; i += kThreads)
      if (s_hist[i] != 0u) atomicAdd(&p.class_counts[i], static_cast<unsigned long long>(s_hist[i]));
  }
}

// ---- the staged kernel --------------------------------------------------------------------
struct StagedParams {
  const void* logits;  // (B, C, h, w) contiguous
  int dtype;
  tile::Geom g;
  tile::PixelParams pix;  // image_id filled per block
  const int64_t* image_ids;
  float* out_scores;
  int64_t* out_labels;
  unsigned long long* class_counts;
  unsigned int* bad_flag;
  bool select;
  SelectArgs sel;
};

// 5 blocks of 4 warps per SM (at most 102 registers a thread; r = 2: 4 blocks, 128): what the
// shared memory of a tile at 4x upsampling allows (about 41 KB at C = 19, r = 1). Eight output
// pixels a thread spread each thread's fixed costs (tables, staging set-up, the reservation).
constexpr int kStagedMinBlocks = 5;

// Kernel variants: ripu at r = 1 or 2 (window statistics), or kPointwise (r = 0: every
// heuristic, ripu included); kSelect: the fused selection epilogue (fused_candidates), else
// score/label maps (score_maps). Both flags are template parameters so that neither variant
// carries the other's code.
template <int C, int R, bool kPointwise, bool kSelect>
__global__ void __launch_bounds__(tile::kThreads, R == 2 ? kStagedMinBlocks - 1 : kStagedMinBlocks)
    tile_kernel(const StagedParams p) {
  namespace t = tile;
  constexpr int WT = t::kTW + 2 * R;
  extern __shared__ float4 s_dyn[];  // t::staged_floats(g) floats: hrow, raw / pixel records
  __shared__ t::Tab s_tab[t::kColTab + WT];
  __shared__ unsigned int s_hist[t::kMaxClasses];
  __shared__ float s_w[t::kMaxClasses];

  const int tid = threadIdx.x;
  const int b = blockIdx.z;
  const int y0 = blockIdx.y * t::kTH, x0 = blockIdx.x * t::kTW;
  const t::Geom& g = p.g;
  const int nc = t::Classes<C>::count(g.C);
  const t::Smem s = t::smem_view(reinterpret_cast<float*>(s_dyn), s_tab, g);
  if (tid < t::kMaxClasses) {
    s_hist[tid] = 0u;
    if (kSelect) s_w[tid] = (p.sel.weights != nullptr && tid < nc) ? p.sel.weights[tid] : 1.0f;
  }

  t::phase_tables<C, R>(tid, g, y0, x0, s);
  __syncthreads();
  const int64_t img_elems = static_cast<int64_t>(nc) * g.h * g.w;
  bool bad;
  switch (p.dtype) {  // block-uniform; the only place the element type matters
    case kFloat32: bad = t::phase_raw<C>(tid, g, static_cast<const float*>(p.logits) + b * img_elems, y0, x0, R, s); break;
    case kBFloat16: bad = t::phase_raw<C>(tid, g, static_cast<const t::Bf16*>(p.logits) + b * img_elems, y0, x0, R, s); break;
    default: bad = t::phase_raw<C>(tid, g, static_cast<const t::F16*>(p.logits) + b * img_elems, y0, x0, R, s); break;
  }
  __syncthreads();
  t::phase_rows<C, R>(tid, g, s);
  __syncthreads();
  t::PixelParams pp = p.pix;
  if (kPointwise && pp.heur == t::kHeurRandom) pp.image_id = p.image_ids[b];
  bad |= t::phase_pixels<C, R, kPointwise>(tid, g, y0, x0, pp, s);
  if (bad) *p.bad_flag = 1u;  // benign race: every writer stores the same value
  __syncthreads();

  // Phase E: kOutPerThread output pixels per thread, unrolled (their keys stay in
  // registers, no branch but the tile edge); a warp is one tile row. The selection appends
  // a thread's candidates with one warp-wide reservation (one atomicAdd per warp).
  const int64_t img_base = static_cast<int64_t>(b) * g.H * g.W;
  const bool select = kSelect && p.sel.whole[b] == 0;  // an image labelled whole has none
  PixCutoff cut{};
  uint64_t slot_key = 0;
  const uint8_t* blocked = nullptr;
  if (kSelect) {
    cut = pix_cutoff(load_cutoff(p.sel), p.sel.image_ids[b] * static_cast<int64_t>(g.H) * g.W);
    blocked = p.sel.blocked + img_base;
    slot_key = static_cast<uint64_t>(b) << (32 + p.sel.pixbits);
  }
  const float neg_inv_lnc = -pp.inv_lnc;
  uint64_t keys[t::kOutPerThread];
  unsigned takes = 0u;
#pragma unroll
  for (int k = 0; k < t::kOutPerThread; ++k) {
    const t::OutPixel o = t::output_pixel<R, kPointwise>(tid, k, g, y0, x0, neg_inv_lnc, s.px);
    if (!kSelect && o.inside) {
      if (p.out_scores != nullptr) p.out_scores[img_base + o.pix] = o.score;
      if (p.out_labels != nullptr) p.out_labels[img_base + o.pix] = o.label;
    }
    if (p.class_counts != nullptr && o.inside) atomicAdd(&s_hist[o.label], 1u);
    if (kSelect) {
      const float ws = o.score * s_w[o.label];
      // no short-circuit: one predicated load, no branch
      const bool take = select & o.inside & (blocked[o.inside ? o.pix : 0] == 0) & beats(ws, o.pix, cut);
      keys[k] = slot_key | (static_cast<uint64_t>(~order_bits(ws)) << p.sel.pixbits) | static_cast<uint64_t>(o.pix);
      takes |= (take ? 1u : 0u) << k;
    }
  }
  if (kSelect) {
    int64_t at = warp_reserve(__popc(takes), p.sel.count, p.sel.slot_counts + b);
#pragma unroll
    for (int k = 0; k < t::kOutPerThread; ++k) {
      if ((takes >> k) & 1u) {
        if (at < p.sel.capacity) p.sel.keys[at] = keys[k];
        ++at;
      }
    }
  }

  if (p.class_counts != nullptr) {
    __syncthreads();
    if (tid < nc && s_hist[tid] != 0u)
      atomicAdd(&p.class_counts[tid], static_cast<unsigned long long>(s_hist[tid]));
  }
}

template <int C, int R, bool kPointwise, bool kSelect>
cudaError_t launch_staged_kernel(const StagedParams& p, dim3 grid, size_t smem, cudaStream_t stream) {
  const auto kernel = tile_kernel<C, R, kPointwise, kSelect>;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, tile::kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <int C, bool kSelect>
cudaError_t launch_staged_mode(const StagedParams& p, int radius, dim3 grid, size_t smem, cudaStream_t stream) {
  if (tile::pointwise_variant(p.pix.heur, radius)) return launch_staged_kernel<C, 0, true, kSelect>(p, grid, smem, stream);
  if (radius == 1) return launch_staged_kernel<C, 1, false, kSelect>(p, grid, smem, stream);
  return launch_staged_kernel<C, 2, false, kSelect>(p, grid, smem, stream);
}

template <int C>
cudaError_t launch_staged_c(const StagedParams& p, int radius, dim3 grid, size_t smem, cudaStream_t stream) {
  if (p.select) return launch_staged_mode<C, true>(p, radius, grid, smem, stream);
  return launch_staged_mode<C, false>(p, radius, grid, smem, stream);
}

// Static shared memory of tile_kernel at radius r (bytes), for the fit test.
size_t staged_static_smem(int r) {
  using namespace tile;
  return sizeof(Tab) * (kColTab + halo_w(r)) + 2 * 4 * kMaxClasses;
}

// The staged kernel's geometry and dynamic shared memory when it can take this call.
constexpr size_t kMaxStagedSmem = 112 * 1024;  // two blocks per SM at least (228 KB on sm_90)

bool staged_geometry(const LogitsView& lg, int radius, float rh, float rw, tile::Geom* g, size_t* smem) {
  const int64_t i31 = int64_t{1} << 31;
  if (lg.C > tile::kMaxClasses || radius > tile::kMaxRadius || lg.H * lg.W >= i31 || lg.C * lg.h * lg.w >= i31 ||
      (lg.H + tile::kTH - 1) / tile::kTH > 65535)
    return false;
  *g = tile::Geom{static_cast<int>(lg.H), static_cast<int>(lg.W), static_cast<int>(lg.h), static_cast<int>(lg.w),
                  static_cast<int>(lg.C), radius, rh, rw, 0, 0};
  tile::stage_extent(*g);
  *smem = sizeof(float) * static_cast<size_t>(tile::staged_floats(*g));
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    return false;
  const size_t total = *smem + staged_static_smem(radius);
  return total <= kMaxStagedSmem && total <= static_cast<size_t>(optin);
}

template <typename T, int CMAX>
__global__ void labels_at_kernel(LogitsView lg, float rh, float rw, const int64_t* slots,
                                 const int64_t* pix, int64_t n, int64_t* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t b = slots[i], q = pix[i];
  const int64_t y = q / lg.W, x = q - y * lg.W;
  const int64_t plane = lg.h * lg.w;
  const T* img = static_cast<const T*>(lg.data) + b * lg.C * plane;
  const Tap tap = make_tap(y, x, lg.h, lg.w, rh, rw);
  out[i] = pixel_stats<T, CMAX>(img, plane, static_cast<int>(lg.C), tap, false).label;
}

// align_corners=True scale, as PyTorch computes it: float(in - 1) / (out - 1), 0 for out 1.
float corner_scale(int64_t in, int64_t out) {
  return out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.0f;
}

template <typename T, int CMAX>
void launch_tiles(const TileParams& p, int radius, dim3 grid, cudaStream_t stream) {
  switch (radius) {
    case 0: tile_kernel_generic<T, CMAX, 0><<<grid, kThreads, 0, stream>>>(p); break;
    case 1: tile_kernel_generic<T, CMAX, 1><<<grid, kThreads, 0, stream>>>(p); break;
    default: tile_kernel_generic<T, CMAX, 2><<<grid, kThreads, 0, stream>>>(p); break;
  }
}

template <typename T>
void launch_tiles_c(const TileParams& p, int radius, dim3 grid, cudaStream_t stream) {
  if (p.lg.C <= 32) launch_tiles<T, 32>(p, radius, grid, stream);
  else launch_tiles<T, 0>(p, radius, grid, stream);
}

bool valid_view(const LogitsView& lg) {
  return lg.data != nullptr && lg.B > 0 && lg.B <= 65535 && lg.C >= 2 && lg.C <= kMaxClasses &&
         lg.h > 0 && lg.w > 0 && lg.H > 0 && lg.W > 0 && (lg.H + kTH - 1) / kTH <= 65535 &&
         lg.dtype >= kFloat32 && lg.dtype <= kFloat16;
}

}  // namespace

cudaError_t score_tiles(const LogitsView& lg, int heuristic, int radius, uint32_t seed_hash,
                        const int64_t* image_ids, float* out_scores, int64_t* out_labels,
                        unsigned long long* class_counts, const SelectArgs* sel, unsigned int* bad_flag,
                        cudaStream_t stream) {
  if (!valid_view(lg) || radius < 0 || radius > kMaxFusedRadius || bad_flag == nullptr) return cudaErrorInvalidValue;
  if (heuristic != kRipu && radius != 0) return cudaErrorInvalidValue;
  if (heuristic == kRandom && image_ids == nullptr) return cudaErrorInvalidValue;
  if (sel != nullptr && (sel->keys == nullptr || sel->count == nullptr || sel->slot_counts == nullptr ||
                         sel->blocked == nullptr || sel->whole == nullptr || sel->image_ids == nullptr))
    return cudaErrorInvalidValue;
  const float rh = corner_scale(lg.h, lg.H), rw = corner_scale(lg.w, lg.W);
  tile::Geom g{};
  size_t smem = 0;
  if (staged_geometry(lg, radius, rh, rw, &g, &smem)) {
    StagedParams sp{};
    sp.logits = lg.data;
    sp.dtype = lg.dtype;
    sp.g = g;
    sp.pix = tile::PixelParams{heuristic, 1.0f / logf(static_cast<float>(lg.C)), seed_hash, 0};
    sp.image_ids = image_ids;
    sp.out_scores = out_scores;
    sp.out_labels = out_labels;
    sp.class_counts = class_counts;
    sp.bad_flag = bad_flag;
    sp.select = sel != nullptr;
    if (sel != nullptr) sp.sel = *sel;
    const dim3 grid(static_cast<unsigned>((lg.W + tile::kTW - 1) / tile::kTW),
                    static_cast<unsigned>((lg.H + tile::kTH - 1) / tile::kTH), static_cast<unsigned>(lg.B));
    // class loops unrolled to the exact C for the common label sets: 19 (Cityscapes, GTAV)
    // and 16 (SYNTHIA); any other C <= 32 runs predicated to 32 classes
    if (lg.C == 19) return launch_staged_c<19>(sp, radius, grid, smem, stream);
    if (lg.C == 16) return launch_staged_c<16>(sp, radius, grid, smem, stream);
    return launch_staged_c<0>(sp, radius, grid, smem, stream);
  }
  TileParams p{};
  p.lg = lg;
  p.heur = heuristic;
  p.seed_hash = seed_hash;
  p.image_ids = image_ids;
  p.lnc = logf(static_cast<float>(lg.C));
  p.rh = rh;
  p.rw = rw;
  p.out_scores = out_scores;
  p.out_labels = out_labels;
  p.class_counts = class_counts;
  p.bad_flag = bad_flag;
  p.select = sel != nullptr;
  if (sel != nullptr) p.sel = *sel;
  const dim3 grid(static_cast<unsigned>((lg.W + kTW - 1) / kTW), static_cast<unsigned>((lg.H + kTH - 1) / kTH),
                  static_cast<unsigned>(lg.B));
  switch (lg.dtype) {
    case kFloat32: launch_tiles_c<float>(p, radius, grid, stream); break;
    case kBFloat16: launch_tiles_c<__nv_bfloat16>(p, radius, grid, stream); break;
    default: launch_tiles_c<__half>(p, radius, grid, stream); break;
  }
  return cudaGetLastError();
}

cudaError_t labels_at(const LogitsView& lg, const int64_t* slots, const int64_t* pix, int64_t n,
                      int64_t* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!valid_view(lg) || slots == nullptr || pix == nullptr || out == nullptr) return cudaErrorInvalidValue;
  const float rh = corner_scale(lg.h, lg.H), rw = corner_scale(lg.w, lg.W);
  const unsigned blocks = static_cast<unsigned>((n + 255) / 256);
  const bool small = lg.C <= 32;
  switch (lg.dtype) {
    case kFloat32:
      if (small) labels_at_kernel<float, 32><<<blocks, 256, 0, stream>>>(lg, rh, rw, slots, pix, n, out);
      else labels_at_kernel<float, 0><<<blocks, 256, 0, stream>>>(lg, rh, rw, slots, pix, n, out);
      break;
    case kBFloat16:
      if (small) labels_at_kernel<__nv_bfloat16, 32><<<blocks, 256, 0, stream>>>(lg, rh, rw, slots, pix, n, out);
      else labels_at_kernel<__nv_bfloat16, 0><<<blocks, 256, 0, stream>>>(lg, rh, rw, slots, pix, n, out);
      break;
    default:
      if (small) labels_at_kernel<__half, 32><<<blocks, 256, 0, stream>>>(lg, rh, rw, slots, pix, n, out);
      else labels_at_kernel<__half, 0><<<blocks, 256, 0, stream>>>(lg, rh, rw, slots, pix, n, out);
      break;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace cbda
