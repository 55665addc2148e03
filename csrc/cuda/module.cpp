// pybind11 module cbda._cuda. Takes addresses of torch-allocated device buffers
// (tensor.data_ptr()), sizes, dtypes and the CUDA stream (torch.cuda.current_stream().cuda_stream)
// as integers; never sees a torch header, so one build works with any torch (docs/architecture.md).
//
// Importing the module touches no GPU: the CUDA runtime (linked statically) initialises on
// the first call. Every entry point releases the GIL while enqueueing, and turns a CUDA
// error (launch or argument) into a RuntimeError naming the function.
#include <pybind11/pybind11.h>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "kernels.h"

namespace py = pybind11;
using namespace cbda::cuda;

namespace {

using uptr = std::uintptr_t;

template <typename T>
T* ptr(uptr p) { return reinterpret_cast<T*>(p); }

cudaStream_t stream_of(uptr s) { return reinterpret_cast<cudaStream_t>(s); }

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("cbda._cuda.") + what + ": " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
  }
}

template <typename F>
void run(const char* what, F&& f) {
  cudaError_t err;
  {
    py::gil_scoped_release nogil;
    err = f();
  }
  check(err, what);
}

LogitsView view(uptr data, int dtype, int64_t B, int64_t C, int64_t h, int64_t w, int64_t H, int64_t W) {
  return LogitsView{ptr<const void>(data), dtype, B, C, h, w, H, W};
}

SelectArgs select_args(uptr weights, uptr blocked, uptr whole, uptr image_ids, uptr cut_score, uptr cut_gidx,
                       int pixbits, uptr keys, int64_t capacity, uptr count, uptr slot_counts) {
  SelectArgs s{};
  s.weights = ptr<const float>(weights);
  s.blocked = ptr<const uint8_t>(blocked);
  s.whole = ptr<const uint8_t>(whole);
  s.image_ids = ptr<const int64_t>(image_ids);
  s.cut_score = ptr<const float>(cut_score);
  s.cut_gidx = ptr<const int64_t>(cut_gidx);
  if ((s.cut_score == nullptr) != (s.cut_gidx == nullptr))
    throw std::invalid_argument("cbda._cuda: cut_score and cut_gidx must both be set or both be 0");
  s.pixbits = pixbits;
  s.keys = ptr<uint64_t>(keys);
  s.capacity = capacity;
  s.count = ptr<unsigned long long>(count);
  s.slot_counts = ptr<unsigned long long>(slot_counts);
  return s;
}

void score_maps(uptr logits, int dtype, int64_t B, int64_t C, int64_t h, int64_t w, int64_t H, int64_t W,
                int heuristic, int radius, uint32_t seed_hash, uptr image_ids, uptr out_scores, uptr out_labels,
                uptr class_counts, uptr bad_flag, uptr stream) {
  const LogitsView lg = view(logits, dtype, B, C, h, w, H, W);
  run("score_maps", [&] {
    return score_tiles(lg, heuristic, radius, seed_hash, ptr<const int64_t>(image_ids), ptr<float>(out_scores),
                       ptr<int64_t>(out_labels), ptr<unsigned long long>(class_counts), nullptr,
                       ptr<unsigned int>(bad_flag), stream_of(stream));
  });
}

void fused_candidates(uptr logits, int dtype, int64_t B, int64_t C, int64_t h, int64_t w, int64_t H, int64_t W,
                      int heuristic, int radius, uint32_t seed_hash, uptr image_ids, uptr class_counts,
                      uptr weights, uptr blocked, uptr whole, uptr cut_score, uptr cut_gidx, int pixbits, uptr keys,
                      int64_t capacity, uptr count, uptr slot_counts, uptr bad_flag, uptr stream) {
  const LogitsView lg = view(logits, dtype, B, C, h, w, H, W);
  const SelectArgs sel =
      select_args(weights, blocked, whole, image_ids, cut_score, cut_gidx, pixbits, keys, capacity, count, slot_counts);
  run("fused_candidates", [&] {
    return score_tiles(lg, heuristic, radius, seed_hash, ptr<const int64_t>(image_ids), nullptr, nullptr,
                       ptr<unsigned long long>(class_counts), &sel, ptr<unsigned int>(bad_flag), stream_of(stream));
  });
}

void map_candidates(uptr scores, uptr labels, int64_t B, int64_t H, int64_t W, uptr weights, uptr blocked,
                    uptr whole, uptr image_ids, uptr cut_score, uptr cut_gidx, int pixbits, uptr keys,
                    int64_t capacity, uptr count, uptr slot_counts, uptr stream) {
  const SelectArgs sel =
      select_args(weights, blocked, whole, image_ids, cut_score, cut_gidx, pixbits, keys, capacity, count, slot_counts);
  run("map_candidates", [&] {
    return compact_scores(ptr<const float>(scores), ptr<const int64_t>(labels), B, H, W, sel, stream_of(stream));
  });
}

void labels_at_picks(uptr logits, int dtype, int64_t B, int64_t C, int64_t h, int64_t w, int64_t H, int64_t W,
                     uptr slots, uptr pix, int64_t n, uptr out, uptr stream) {
  const LogitsView lg = view(logits, dtype, B, C, h, w, H, W);
  run("labels_at", [&] {
    return labels_at(lg, ptr<const int64_t>(slots), ptr<const int64_t>(pix), n, ptr<int64_t>(out), stream_of(stream));
  });
}

void impurity(uptr labels, int64_t B, int64_t H, int64_t W, int64_t C, int64_t R, uptr scratch, uptr out,
              uptr stream) {
  run("window_impurity", [&] {
    return window_impurity(ptr<const int64_t>(labels), B, H, W, C, R, ptr<int32_t>(scratch), ptr<float>(out),
                           stream_of(stream));
  });
}

void mean(uptr x, int64_t B, int64_t H, int64_t W, int64_t R, uptr scratch, uptr out, uptr stream) {
  run("window_mean", [&] {
    return window_mean(ptr<const float>(x), B, H, W, R, ptr<double>(scratch), ptr<float>(out), stream_of(stream));
  });
}

void mul(uptr a, uptr b, uptr out, int64_t n, uptr stream) {
  run("multiply", [&] { return multiply(ptr<const float>(a), ptr<const float>(b), ptr<float>(out), n, stream_of(stream)); });
}

void prior_mask(uptr offsets, uptr ys, uptr xs, uptr radii, int64_t B, int64_t H, int64_t W, int64_t radius,
                uptr mask, uptr stream) {
  run("mark_prior", [&] {
    return mark_prior(ptr<const int64_t>(offsets), ptr<const int64_t>(ys), ptr<const int64_t>(xs),
                      ptr<const int64_t>(radii), B, H, W, radius, ptr<uint8_t>(mask), stream_of(stream));
  });
}

size_t sort_temp_bytes(int64_t n, int end_bit) {
  size_t bytes = 0;
  run("sort_temp_bytes", [&] { return sort_keys_temp_bytes(n, end_bit, &bytes); });
  return bytes;
}

void sort(uptr in, uptr out, int64_t n, int end_bit, uptr temp, size_t temp_bytes, uptr stream) {
  run("sort_keys", [&] {
    return sort_keys(ptr<const uint64_t>(in), ptr<uint64_t>(out), n, end_bit, ptr<void>(temp), temp_bytes,
                     stream_of(stream));
  });
}

void greedy_picks(uptr sorted_keys, uptr slot_counts, int64_t B, int64_t H, int64_t W, int64_t radius, int pixbits,
                  uptr mask, int64_t quota, uptr out_pix, uptr out_score, uptr out_count, uptr stream) {
  run("greedy", [&] {
    return greedy(ptr<const uint64_t>(sorted_keys), ptr<const unsigned long long>(slot_counts), B, H, W, radius,
                  pixbits, ptr<uint8_t>(mask), quota, ptr<int64_t>(out_pix), ptr<float>(out_score),
                  ptr<int64_t>(out_count), stream_of(stream));
  });
}

void prune(uptr keys, int64_t n, int64_t B, int pixbits, bool per_slot, int64_t limit, uptr slot_counts,
           uptr slot_rank, uptr image_ids, int64_t hw, uptr work, uptr out_keys, uptr out_count, uptr out_slot_counts,
           uptr cut_score, uptr cut_gidx, uptr stream) {
  run("prune_candidates", [&] {
    return prune_candidates(ptr<const uint64_t>(keys), n, B, pixbits, per_slot, limit,
                            ptr<const unsigned long long>(slot_counts), ptr<const int64_t>(slot_rank),
                            ptr<const int64_t>(image_ids), hw, ptr<long long>(work), ptr<uint64_t>(out_keys),
                            ptr<unsigned long long>(out_count), ptr<unsigned long long>(out_slot_counts),
                            ptr<float>(cut_score), ptr<int64_t>(cut_gidx), stream_of(stream));
  });
}

void trim(uptr scores, uptr gidx, uptr classes, uptr count, int64_t bound, uptr gmax, int64_t limit, uptr work,
          uptr out_scores, uptr out_gidx, uptr out_classes, uptr out_count, uptr cut_score, uptr cut_gidx,
          uptr stream) {
  run("trim_picks", [&] {
    return trim_picks(ptr<const float>(scores), ptr<const int64_t>(gidx), ptr<const int64_t>(classes),
                      ptr<const int64_t>(count), bound, ptr<const int64_t>(gmax), limit, ptr<long long>(work),
                      ptr<float>(out_scores), ptr<int64_t>(out_gidx), ptr<int64_t>(out_classes),
                      ptr<unsigned long long>(out_count), ptr<float>(cut_score), ptr<int64_t>(cut_gidx),
                      stream_of(stream));
  });
}

size_t order_workspace_bytes(int64_t n) {
  size_t bytes = 0;
  run("pick_order_workspace_bytes", [&] { return pick_order_workspace_bytes(n, &bytes); });
  return bytes;
}

void order(uptr scores, uptr gidx, int64_t n, int index_bits, uptr perm, uptr workspace, size_t workspace_bytes,
           uptr stream) {
  run("pick_order", [&] {
    return pick_order(ptr<const float>(scores), ptr<const int64_t>(gidx), n, index_bits, ptr<int64_t>(perm),
                      ptr<void>(workspace), workspace_bytes, stream_of(stream));
  });
}

// (driver version, runtime version); 0 for a driver that cannot be queried. Does not create
// a context.
std::pair<int, int> versions() {
  int driver = 0, runtime = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) runtime = 0;
  return {driver, runtime};
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "cbda CUDA kernels (fused scoring, exact streaming selection); raw pointers, no torch headers";
  m.attr("MAX_FUSED_RADIUS") = kMaxFusedRadius;
  m.attr("MAX_CLASSES") = kMaxClasses;
  m.attr("HEURISTICS") = py::dict(py::arg("ripu") = static_cast<int>(kRipu), py::arg("entropy") = static_cast<int>(kEntropy),
                                  py::arg("margin") = static_cast<int>(kMargin),
                                  py::arg("least_confidence") = static_cast<int>(kLeastConfidence),
                                  py::arg("random") = static_cast<int>(kRandom),
                                  py::arg("entropy_raw") = static_cast<int>(kEntropyRaw));
  m.attr("DTYPES") = py::dict(py::arg("float32") = static_cast<int>(kFloat32), py::arg("bfloat16") = static_cast<int>(kBFloat16),
                              py::arg("float16") = static_cast<int>(kFloat16));
  m.def("score_maps", &score_maps, "Scores (B,H,W) float32 and labels (B,H,W) int64 from logits.",
        py::arg("logits"), py::arg("dtype"), py::arg("B"), py::arg("C"), py::arg("h"), py::arg("w"), py::arg("H"),
        py::arg("W"), py::arg("heuristic"), py::arg("radius"), py::arg("seed_hash"), py::arg("image_ids"),
        py::arg("out_scores"), py::arg("out_labels"), py::arg("class_counts"), py::arg("bad_flag"), py::arg("stream"));
  m.def("fused_candidates", &fused_candidates,
        "Fused pass: scores, class weights, blocking, cut-off, compaction of candidate keys.", py::arg("logits"),
        py::arg("dtype"), py::arg("B"), py::arg("C"), py::arg("h"), py::arg("w"), py::arg("H"), py::arg("W"),
        py::arg("heuristic"), py::arg("radius"), py::arg("seed_hash"), py::arg("image_ids"), py::arg("class_counts"),
        py::arg("weights"), py::arg("blocked"), py::arg("whole"), py::arg("cut_score"), py::arg("cut_gidx"),
        py::arg("pixbits"), py::arg("keys"), py::arg("capacity"), py::arg("count"), py::arg("slot_counts"),
        py::arg("bad_flag"), py::arg("stream"));
  m.def("map_candidates", &map_candidates, "Compaction of candidate keys from precomputed score maps.",
        py::arg("scores"), py::arg("labels"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("weights"),
        py::arg("blocked"), py::arg("whole"), py::arg("image_ids"), py::arg("cut_score"), py::arg("cut_gidx"),
        py::arg("pixbits"), py::arg("keys"), py::arg("capacity"), py::arg("count"), py::arg("slot_counts"),
        py::arg("stream"));
  m.def("labels_at", &labels_at_picks, "Pseudo labels (argmax) at given (slot, pixel) pairs.", py::arg("logits"),
        py::arg("dtype"), py::arg("B"), py::arg("C"), py::arg("h"), py::arg("w"), py::arg("H"), py::arg("W"),
        py::arg("slots"), py::arg("pix"), py::arg("n"), py::arg("out"), py::arg("stream"));
  m.def("window_impurity", &impurity, "Windowed impurity of int64 label maps, any radius.", py::arg("labels"),
        py::arg("B"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("R"), py::arg("scratch"), py::arg("out"),
        py::arg("stream"));
  m.def("window_mean", &mean, "Windowed mean of float32 maps, any radius.", py::arg("x"), py::arg("B"), py::arg("H"),
        py::arg("W"), py::arg("R"), py::arg("scratch"), py::arg("out"), py::arg("stream"));
  m.def("multiply", &mul, "out = a * b (float32).", py::arg("a"), py::arg("b"), py::arg("out"), py::arg("n"),
        py::arg("stream"));
  m.def("mark_prior", &prior_mask, "Blocked-centre byte mask from the PriorPicks CSR.", py::arg("offsets"),
        py::arg("ys"), py::arg("xs"), py::arg("radii"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("radius"),
        py::arg("mask"), py::arg("stream"));
  m.def("sort_temp_bytes", &sort_temp_bytes, py::arg("n"), py::arg("end_bit"));
  m.def("sort_keys", &sort, py::arg("keys_in"), py::arg("keys_out"), py::arg("n"), py::arg("end_bit"),
        py::arg("temp"), py::arg("temp_bytes"), py::arg("stream"));
  m.def("greedy", &greedy_picks, "Exact per-image greedy over sorted candidate keys.", py::arg("sorted_keys"),
        py::arg("slot_counts"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("radius"), py::arg("pixbits"),
        py::arg("mask"), py::arg("quota"), py::arg("out_pix"), py::arg("out_score"), py::arg("out_count"),
        py::arg("stream"));
  m.def("select_work_words", &select_work_words, "int64 words of a radix select's work buffer.", py::arg("nseg"));
  m.def("prune_candidates", &prune, "Keep the best `limit` candidate keys per slot or per batch (radix select).",
        py::arg("keys"), py::arg("n"), py::arg("B"), py::arg("pixbits"), py::arg("per_slot"), py::arg("limit"),
        py::arg("slot_counts"), py::arg("slot_rank"), py::arg("image_ids"), py::arg("hw"), py::arg("work"),
        py::arg("out_keys"), py::arg("out_count"), py::arg("out_slot_counts"), py::arg("cut_score"),
        py::arg("cut_gidx"), py::arg("stream"));
  m.def("trim_picks", &trim, "Keep the best `limit` picks of a buffer (radix select); raise the cut-off.",
        py::arg("scores"), py::arg("gidx"), py::arg("classes"), py::arg("count"), py::arg("bound"), py::arg("gmax"),
        py::arg("limit"), py::arg("work"), py::arg("out_scores"), py::arg("out_gidx"), py::arg("out_classes"),
        py::arg("out_count"), py::arg("cut_score"), py::arg("cut_gidx"), py::arg("stream"));
  m.def("pick_order_workspace_bytes", &order_workspace_bytes, py::arg("n"));
  m.def("pick_order", &order, "Permutation ordering picks by (score desc, global index asc).", py::arg("scores"),
        py::arg("gidx"), py::arg("n"), py::arg("index_bits"), py::arg("perm"), py::arg("workspace"),
        py::arg("workspace_bytes"), py::arg("stream"));
  m.def("versions", &versions, "(CUDA driver version, runtime version); no context is created.");
}
