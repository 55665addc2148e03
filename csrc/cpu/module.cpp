// pybind11 module cbda._cpu. Takes addresses of torch-allocated buffers (tensor.data_ptr())
// and sizes; never sees a torch header, so one build works with any torch (docs/architecture.md).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "greedy.h"
#include "round.h"
#include "score.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

cbda::PriorPicksView prior_view(std::uintptr_t offsets, std::uintptr_t ys, std::uintptr_t xs,
                                std::uintptr_t radii, std::uintptr_t whole) {
  return {ptr<const int64_t>(offsets), ptr<const int64_t>(ys), ptr<const int64_t>(xs),
          ptr<const int64_t>(radii), ptr<const uint8_t>(whole)};
}

// logits: address, dtype code (0 float32, 1 bfloat16, 2 float16), sizes and element strides
cbda::LogitsView logits_view(std::uintptr_t data, int dtype, py::tuple sizes, py::tuple strides) {
  return {ptr<const void>(data), dtype, sizes[0].cast<int64_t>(), sizes[1].cast<int64_t>(),
          sizes[2].cast<int64_t>(), sizes[3].cast<int64_t>(), strides[0].cast<int64_t>(),
          strides[1].cast<int64_t>(), strides[2].cast<int64_t>(), strides[3].cast<int64_t>()};
}

void score_maps(std::uintptr_t logits, int dtype, py::tuple sizes, py::tuple strides,
                std::uintptr_t image_ids, int heuristic, int64_t radius, int64_t H, int64_t W,
                uint64_t seed, std::uintptr_t out_scores, std::uintptr_t out_labels, int num_threads) {
  const cbda::LogitsView lv = logits_view(logits, dtype, sizes, strides);
  py::gil_scoped_release nogil;
  cbda::score_maps(lv, ptr<const int64_t>(image_ids), heuristic, radius, H, W, seed,
                   ptr<float>(out_scores), ptr<int64_t>(out_labels), num_threads);
}

bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "cbda CPU kernels (C++17, OpenMP)";
  m.def("score_maps", &score_maps,
        "Fused scores [B,H,W] float32 and pseudo labels [B,H,W] int64 of a batch of logits.",
        py::arg("logits"), py::arg("dtype"), py::arg("sizes"), py::arg("strides"),
        py::arg("image_ids"), py::arg("heuristic"), py::arg("radius"), py::arg("H"), py::arg("W"),
        py::arg("seed"), py::arg("out_scores"), py::arg("out_labels"), py::arg("num_threads") = 0);
  py::class_<cbda::Round>(m, "Round",
                          "One ra/cbra/da/cbda round: fused scoring, per-image greedy, streaming top-K.")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, int>(), py::arg("H"), py::arg("W"),
           py::arg("radius"), py::arg("quota"), py::arg("total"), py::arg("num_threads") = 0)
      .def("add_logits",
           [](cbda::Round& r, std::uintptr_t logits, int dtype, py::tuple sizes, py::tuple strides,
              std::uintptr_t ids, int heuristic, int64_t radius, uint64_t seed, std::uintptr_t weights,
              std::uintptr_t offsets, std::uintptr_t ys, std::uintptr_t xs, std::uintptr_t radii,
              std::uintptr_t whole, std::uintptr_t hist) {
             const cbda::LogitsView lv = logits_view(logits, dtype, sizes, strides);
             const cbda::PriorPicksView prior = prior_view(offsets, ys, xs, radii, whole);
             py::gil_scoped_release nogil;
             r.add_logits(lv, ptr<const int64_t>(ids), heuristic, radius, seed, ptr<const float>(weights),
                          prior, ptr<int64_t>(hist));
           })
      .def("add_scores",
           [](cbda::Round& r, std::uintptr_t scores, std::uintptr_t labels, int64_t B, std::uintptr_t ids,
              std::uintptr_t weights, std::uintptr_t offsets, std::uintptr_t ys, std::uintptr_t xs,
              std::uintptr_t radii, std::uintptr_t whole) {
             const cbda::PriorPicksView prior = prior_view(offsets, ys, xs, radii, whole);
             py::gil_scoped_release nogil;
             r.add_scores(ptr<const float>(scores), ptr<const int64_t>(labels), B, ptr<const int64_t>(ids),
                          ptr<const float>(weights), 0, prior);
           })
      .def("finish_size", &cbda::Round::finish_size)
      .def("finish",
           [](cbda::Round& r, std::uintptr_t ids, std::uintptr_t ys, std::uintptr_t xs, std::uintptr_t scores,
              std::uintptr_t classes) {
             py::gil_scoped_release nogil;
             r.finish(ptr<int64_t>(ids), ptr<int64_t>(ys), ptr<int64_t>(xs), ptr<float>(scores), ptr<int64_t>(classes));
           })
      .def("cutoff", [](const cbda::Round& r) {
        const cbda::Cutoff c = r.cutoff();
        return py::make_tuple(c.active, c.score, c.gidx);
      });
  m.def("has_avx2_fma", &cbda::have_avx2_fma);
  m.def("has_openmp", &has_openmp);
  m.def("max_threads", &max_threads);
}
