// Host entry points of cbda._cuda (implemented in the .cu files, bound in module.cpp).
//
// Every pointer is device memory allocated by torch in Python; sizes are int64; every
// function enqueues on `stream` and returns the launch status (cudaGetLastError), which
// module.cpp turns into a Python exception. Nothing here synchronises the device.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace cbda {
namespace cuda {

enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Kernel-level heuristics. ripu_pixel and ripu with r > kMaxFusedRadius are composed in
// Python from kEntropyRaw / kEntropy maps and the window passes of window.cu.
enum Heuristic : int {
  kRipu = 0,             // P·U over the (2r+1)² window, r <= kMaxFusedRadius
  kEntropy = 2,          // entropy / ln C
  kMargin = 3,           // 1 - (p1 - p2)
  kLeastConfidence = 4,  // 1 - p1
  kRandom = 5,           // mix32 chain
  kEntropyRaw = 6,       // unnormalised entropy (ripu_pixel's factor)
};

constexpr int kMaxFusedRadius = 2;
constexpr int64_t kMaxClasses = 65534;  // labels live in uint16 shared tiles, 0xFFFF = outside

// Candidates must come before (score, gidx) in the order (score desc, gidx asc); what a kernel
// holds after load_cutoff (common.cuh).
struct Cutoff {
  bool active;
  float score;
  int64_t gidx;
};

// Logits (B, C, h, w), contiguous, upsampled to (H, W).
struct LogitsView {
  const void* data;
  int dtype;
  int64_t B, C, h, w, H, W;
};

// Where the fused pass (or compact_scores) appends the candidates of a batch.
struct SelectArgs {
  const float* weights;      // [C] class weights or nullptr (w = 1)
  const uint8_t* blocked;    // [B*H*W] 1 = centre blocked by an earlier round
  const uint8_t* whole;      // [B] 1 = image labelled whole already
  const int64_t* image_ids;  // [B] global ids (for the global index of the cut-off test)
  // The cut-off as device scalars, raised between batches by prune_candidates / trim_picks
  // (so the host never reads it); both nullptr = no cut-off.
  const float* cut_score;
  const int64_t* cut_gidx;
  int pixbits;               // bits of y*W+x in the key; 32 + pixbits + slot bits <= 64
  uint64_t* keys;            // [capacity] candidate keys (common.cuh: candidate_key)
  int64_t capacity;
  unsigned long long* count;        // [1] candidates appended
  unsigned long long* slot_counts;  // [B] candidates per batch slot
};

// ---- scores.cu ----------------------------------------------------------------------------
// One pass over output tiles: upsampling, softmax, entropy, label, window statistics
// (heuristic kRipu, radius <= kMaxFusedRadius; other heuristics need radius 0). Optional
// outputs: score / label maps (B, H, W), the pseudo-label histogram [C], and (sel != null)
// the compaction of class-weighted, unblocked candidates beating the cut-off. bad_flag
// (required) is set to 1 when a logit tap read is NaN/+inf or a pixel has every class -inf
// (-inf is a masked class: probability 0); the caller reads it once per batch.
cudaError_t score_tiles(const LogitsView& lg, int heuristic, int radius, uint32_t seed_hash,
                        const int64_t* image_ids, float* out_scores, int64_t* out_labels,
                        unsigned long long* class_counts, const SelectArgs* sel, unsigned int* bad_flag,
                        cudaStream_t stream);

// Pseudo labels at n picks (slot b, pixel y*W+x): the same argmax the tile pass computed.
cudaError_t labels_at(const LogitsView& lg, const int64_t* slots, const int64_t* pix, int64_t n,
                      int64_t* out, cudaStream_t stream);

// ---- window.cu ----------------------------------------------------------------------------
// P(x) = -sum_c q_c ln(q_c + eps) / ln C over the clipped (2R+1)² window, by separable
// running counts per class (any R). scratch: [B*H*W] int32; out: [B*H*W] float32.
cudaError_t window_impurity(const int64_t* labels, int64_t B, int64_t H, int64_t W, int64_t C,
                            int64_t R, int32_t* scratch, float* out, cudaStream_t stream);
// Mean of x over the clipped window (float64 running sums). scratch: [B*H*W] float64.
cudaError_t window_mean(const float* x, int64_t B, int64_t H, int64_t W, int64_t R,
                        double* scratch, float* out, cudaStream_t stream);
// out[i] = a[i] * b[i] (out may alias a or b).
cudaError_t multiply(const float* a, const float* b, float* out, int64_t n, cudaStream_t stream);

// ---- greedy.cu ----------------------------------------------------------------------------
// mask[b, y, x] = 1 where a centre is within radii[p] + radius of an earlier pick p (CSR
// over the batch). The mask must be zeroed before.
cudaError_t mark_prior(const int64_t* offsets, const int64_t* ys, const int64_t* xs,
                       const int64_t* radii, int64_t B, int64_t H, int64_t W, int64_t radius,
                       uint8_t* mask, cudaStream_t stream);
// Candidates from precomputed (B, H, W) float32 scores (labels int64 or nullptr).
cudaError_t compact_scores(const float* scores, const int64_t* labels, int64_t B, int64_t H,
                           int64_t W, const SelectArgs& sel, cudaStream_t stream);
// Radix sort of n candidate keys over bits [0, end_bit).
cudaError_t sort_keys_temp_bytes(int64_t n, int end_bit, size_t* bytes);
cudaError_t sort_keys(const uint64_t* in, uint64_t* out, int64_t n, int end_bit, void* temp,
                      size_t temp_bytes, cudaStream_t stream);
// Exact per-image greedy over sorted keys (grouped by slot): one warp per image scans its
// candidates in order and keeps one iff no kept centre lies within Chebyshev 2r; kept
// centres are marked in `mask` (which holds the prior blocking already). At most `quota`
// picks per image, written to out_pix / out_score [B, quota], counts to out_count [B].
cudaError_t greedy(const uint64_t* sorted_keys, const unsigned long long* slot_counts, int64_t B,
                   int64_t H, int64_t W, int64_t radius, int pixbits, uint8_t* mask,
                   int64_t quota, int64_t* out_pix, float* out_score, int64_t* out_count,
                   cudaStream_t stream);

// ---- select.cu ----------------------------------------------------------------------------
// Exact pruning by radix select (no sort, no host read). `work` holds select_work_words(nseg)
// int64 words (nseg = B per slot, else 1); its contents are internal.
int64_t select_work_words(int64_t nseg);
// Keeps, of the n candidate keys of a batch call, the best `limit` of every slot (per_slot,
// counts in slot_counts) or of the whole batch (order score desc, image id asc, pix asc:
// slot_rank[b] = rank of image_ids[b] among the batch's ids), all when there are no more.
// Kept keys are appended to out_keys in any order (out_count and out_slot_counts [B] must be
// zeroed before; out_keys must hold min(n, limit·segments)). Over the batch, the limit-th
// candidate (when n > limit) raises the cut-off (cut_score, cut_gidx; nullptr = none) to
// itself if that is stricter.
cudaError_t prune_candidates(const uint64_t* keys, int64_t n, int64_t B, int pixbits, bool per_slot, int64_t limit,
                             const unsigned long long* slot_counts, const int64_t* slot_rank,
                             const int64_t* image_ids, int64_t hw, long long* work, uint64_t* out_keys,
                             unsigned long long* out_count, unsigned long long* out_slot_counts, float* cut_score,
                             int64_t* cut_gidx, cudaStream_t stream);
// Keeps the best `limit` of the *count picks (score, gidx, class; count a device word <= bound,
// gmax a device word >= every gidx) in the order (score desc, gidx asc), all when there are
// no more: appended to out_* in any order (out_count zeroed before, out_* hold `limit`). When
// *count > limit the limit-th pick raises the cut-off (nullptr = none).
cudaError_t trim_picks(const float* scores, const int64_t* gidx, const int64_t* classes, const int64_t* count,
                       int64_t bound, const int64_t* gmax, int64_t limit, long long* work, float* out_scores,
                       int64_t* out_gidx, int64_t* out_classes, unsigned long long* out_count, float* cut_score,
                       int64_t* cut_gidx, cudaStream_t stream);

// ---- topk.cu ------------------------------------------------------------------------------
// Permutation ordering n picks by (score desc, gidx asc), -0.0 == +0.0: two stable radix
// sorts (gidx over its low `index_bits` bits, then score). The workspace layout is
// internal; ask its size first (it covers any index_bits).
cudaError_t pick_order_workspace_bytes(int64_t n, size_t* bytes);
cudaError_t pick_order(const float* scores, const int64_t* gidx, int64_t n, int index_bits,
                       int64_t* perm, void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace cbda
