// Window statistics for large windows (ripu_pixel's 65×65, ripu with r > 2): separable
// running sums, so any radius costs O(1) per pixel and pass.
//
// Impurity: for each class c, a row pass counts label == c over [x-R, x+R] (int32, exact)
// and a column pass sums those counts over [y-R, y+R] and accumulates q ln(q + eps) with
// q = count / n. Threads of the column pass take consecutive x, so its loads and stores are
// coalesced; each thread of either pass slides over a segment of kSeg pixels (two loads per
// output), restarting per segment to keep the float64 sums of window_mean short.
#include "common.cuh"

namespace cbda {
namespace cuda {
namespace {

constexpr int kSeg = 64;
constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Row pass, one thread per (row, segment); `Pick` maps an input element to the summand.
template <typename In, typename Acc, typename Pick>
__global__ void row_sums_kernel(const In* in, int64_t rows, int64_t W, int64_t R, Pick pick, Acc* out) {
  const int64_t segs = (W + kSeg - 1) / kSeg;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= rows * segs) return;
  const int64_t row = t / segs, seg = t - row * segs;
  const In* L = in + row * W;
  Acc* O = out + row * W;
  const int64_t xb = seg * kSeg, xe = xb + kSeg < W ? xb + kSeg : W;
  Acc acc = 0;
  const int64_t lo = xb - R > 0 ? xb - R : 0, hi = xb + R < W - 1 ? xb + R : W - 1;
  for (int64_t x = lo; x <= hi; ++x) acc += pick(L[x]);
  for (int64_t x = xb; x < xe; ++x) {
    O[x] = acc;
    if (x - R >= 0) acc -= pick(L[x - R]);
    if (x + R + 1 < W) acc += pick(L[x + R + 1]);
  }
}

struct IsClass {
  int64_t c;
  __device__ int32_t operator()(int64_t l) const { return l == c ? 1 : 0; }
};
struct AsDouble {
  __device__ double operator()(float v) const { return static_cast<double>(v); }
};

__device__ __forceinline__ int64_t clipped_extent(int64_t i, int64_t R, int64_t n) {
  const int64_t lo = i - R > 0 ? i - R : 0, hi = i + R + 1 < n ? i + R + 1 : n;
  return hi - lo;
}

// Column pass, one thread per (image, segment of rows, x). Finish(y, x, sum, n) consumes
// the window sum at (y, x) with its in-image size n.
template <typename Acc, typename Finish>
__global__ void col_sums_kernel(const Acc* in, int64_t B, int64_t H, int64_t W, int64_t R, Finish finish) {
  const int64_t segs = (H + kSeg - 1) / kSeg;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= B * segs * W) return;
  const int64_t x = t % W, bs = t / W, seg = bs % segs, b = bs / segs;
  const Acc* col = in + b * H * W + x;
  const int64_t yb = seg * kSeg, ye = yb + kSeg < H ? yb + kSeg : H;
  const int64_t nx = clipped_extent(x, R, W);
  Acc acc = 0;
  const int64_t lo = yb - R > 0 ? yb - R : 0, hi = yb + R < H - 1 ? yb + R : H - 1;
  for (int64_t y = lo; y <= hi; ++y) acc += col[y * W];
  for (int64_t y = yb; y < ye; ++y) {
    finish((b * H + y) * W + x, acc, nx * clipped_extent(y, R, H));
    if (y - R >= 0) acc -= col[(y - R) * W];
    if (y + R + 1 < H) acc += col[(y + R + 1) * W];
  }
}

struct AccumulateImpurity {
  float* out;
  __device__ void operator()(int64_t i, int32_t count, int64_t n) const {
    if (count > 0) {  // a class absent from the window adds 0 · ln(eps) = 0
      const float q = static_cast<float>(count) / static_cast<float>(n);
      out[i] += q * logf(q + kLogEps);
    }
  }
};

struct StoreMean {
  float* out;
  __device__ void operator()(int64_t i, double sum, int64_t n) const {
    out[i] = static_cast<float>(sum / static_cast<double>(n));
  }
};

__global__ void finish_impurity_kernel(float* p, int64_t n, float lnc) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) p[i] = -p[i] / lnc;
}

__global__ void multiply_kernel(const float* a, const float* b, float* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a[i] * b[i];
}

bool grid_fits(int64_t n) { return (n + kThreads - 1) / kThreads <= 0x7FFFFFFF; }

}  // namespace

cudaError_t window_impurity(const int64_t* labels, int64_t B, int64_t H, int64_t W, int64_t C,
                            int64_t R, int32_t* scratch, float* out, cudaStream_t stream) {
  const int64_t n = B * H * W;
  if (n <= 0) return cudaSuccess;
  if (labels == nullptr || scratch == nullptr || out == nullptr || C < 2 || R < 0 || !grid_fits(n))
    return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(out, 0, static_cast<size_t>(n) * sizeof(float), stream);
  if (err != cudaSuccess) return err;
  const int64_t row_threads = B * H * ((W + kSeg - 1) / kSeg);
  const int64_t col_threads = B * ((H + kSeg - 1) / kSeg) * W;
  for (int64_t c = 0; c < C; ++c) {
    row_sums_kernel<int64_t, int32_t><<<blocks_for(row_threads), kThreads, 0, stream>>>(
        labels, B * H, W, R, IsClass{c}, scratch);
    col_sums_kernel<int32_t><<<blocks_for(col_threads), kThreads, 0, stream>>>(
        scratch, B, H, W, R, AccumulateImpurity{out});
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  finish_impurity_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, n, logf(static_cast<float>(C)));
  return cudaGetLastError();
}

cudaError_t window_mean(const float* x, int64_t B, int64_t H, int64_t W, int64_t R, double* scratch,
                        float* out, cudaStream_t stream) {
  const int64_t n = B * H * W;
  if (n <= 0) return cudaSuccess;
  if (x == nullptr || scratch == nullptr || out == nullptr || R < 0 || !grid_fits(n)) return cudaErrorInvalidValue;
  const int64_t row_threads = B * H * ((W + kSeg - 1) / kSeg);
  const int64_t col_threads = B * ((H + kSeg - 1) / kSeg) * W;
  row_sums_kernel<float, double><<<blocks_for(row_threads), kThreads, 0, stream>>>(x, B * H, W, R, AsDouble{}, scratch);
  col_sums_kernel<double><<<blocks_for(col_threads), kThreads, 0, stream>>>(scratch, B, H, W, R, StoreMean{out});
  return cudaGetLastError();
}

cudaError_t multiply(const float* a, const float* b, float* out, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (a == nullptr || b == nullptr || out == nullptr || !grid_fits(n)) return cudaErrorInvalidValue;
  multiply_kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, b, out, n);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace cbda
