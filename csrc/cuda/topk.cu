// Order of picks (score desc, global index asc) for the streaming top-K trim and the final
// order of a round.
//
// The order needs 32 score bits plus up to 64 index bits, more than one 64-bit key, so it is
// two stable LSD radix sorts: by global index (ascending), then by the complemented orderable
// score bits (ascending = score descending); stability keeps equal scores in index order.
// The trim keeps the first K of this order, and the K-th key becomes the cut-off that the
// fused pass tests before appending a candidate.
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"

namespace cbda {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr size_t kAlign = 256;

size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

struct Layout {
  size_t gk_in, gk_out, v_in, v_out, sk_in, sk_out, temp, temp_bytes, total;
};

cudaError_t layout_for(int64_t n, Layout* L) {
  size_t t1 = 0, t2 = 0;
  cudaError_t err = cub::DeviceRadixSort::SortPairs(nullptr, t1, static_cast<const uint64_t*>(nullptr),
                                                    static_cast<uint64_t*>(nullptr), static_cast<const int64_t*>(nullptr),
                                                    static_cast<int64_t*>(nullptr), n, 0, 64);
  if (err != cudaSuccess) return err;
  err = cub::DeviceRadixSort::SortPairs(nullptr, t2, static_cast<const uint32_t*>(nullptr),
                                        static_cast<uint32_t*>(nullptr), static_cast<const int64_t*>(nullptr),
                                        static_cast<int64_t*>(nullptr), n, 0, 32);
  if (err != cudaSuccess) return err;
  const size_t un = static_cast<size_t>(n);
  size_t off = 0;
  L->gk_in = off; off = align_up(off + un * sizeof(uint64_t));
  L->gk_out = off; off = align_up(off + un * sizeof(uint64_t));
  L->v_in = off; off = align_up(off + un * sizeof(int64_t));
  L->v_out = off; off = align_up(off + un * sizeof(int64_t));
  L->sk_in = off; off = align_up(off + un * sizeof(uint32_t));
  L->sk_out = off; off = align_up(off + un * sizeof(uint32_t));
  L->temp = off;
  L->temp_bytes = t1 > t2 ? t1 : t2;
  L->total = align_up(off + L->temp_bytes);
  return cudaSuccess;
}

__global__ void init_kernel(const int64_t* gidx, int64_t n, uint64_t* keys, int64_t* vals) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  keys[i] = static_cast<uint64_t>(gidx[i]);  // global indices are >= 0
  vals[i] = i;
}

__global__ void score_keys_kernel(const float* scores, const int64_t* perm, int64_t n, uint32_t* keys) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  keys[i] = ~order_bits(scores[perm[i]]);
}

template <typename T>
T* at(void* base, size_t off) { return reinterpret_cast<T*>(static_cast<char*>(base) + off); }

}  // namespace

cudaError_t pick_order_workspace_bytes(int64_t n, size_t* bytes) {
  *bytes = 0;
  if (n <= 0) return cudaSuccess;
  Layout L;
  const cudaError_t err = layout_for(n, &L);
  if (err == cudaSuccess) *bytes = L.total;
  return err;
}

cudaError_t pick_order(const float* scores, const int64_t* gidx, int64_t n, int index_bits, int64_t* perm,
                       void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (scores == nullptr || gidx == nullptr || perm == nullptr || workspace == nullptr || index_bits < 1 ||
      index_bits > 64 ||
      (n + kThreads - 1) / kThreads > 0x7FFFFFFF)
    return cudaErrorInvalidValue;
  Layout L;
  cudaError_t err = layout_for(n, &L);
  if (err != cudaSuccess) return err;
  if (L.total > workspace_bytes) return cudaErrorInvalidValue;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  uint64_t* gk_in = at<uint64_t>(workspace, L.gk_in);
  uint64_t* gk_out = at<uint64_t>(workspace, L.gk_out);
  int64_t* v_in = at<int64_t>(workspace, L.v_in);
  int64_t* v_out = at<int64_t>(workspace, L.v_out);
  uint32_t* sk_in = at<uint32_t>(workspace, L.sk_in);
  uint32_t* sk_out = at<uint32_t>(workspace, L.sk_out);
  void* temp = at<char>(workspace, L.temp);
  size_t temp_bytes = L.temp_bytes;

  init_kernel<<<blocks, kThreads, 0, stream>>>(gidx, n, gk_in, v_in);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  err = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, gk_in, gk_out, v_in, v_out, n, 0, index_bits, stream);
  if (err != cudaSuccess) return err;
  score_keys_kernel<<<blocks, kThreads, 0, stream>>>(scores, v_out, n, sk_in);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  temp_bytes = L.temp_bytes;
  err = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, sk_in, sk_out, v_out, perm, n, 0, 32, stream);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace cbda
