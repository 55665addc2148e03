// pybind11 module cbda._cpu. Takes addresses of torch-allocated buffers (tensor.data_ptr())
// and sizes; never sees a torch header, so one build works with any torch (DESIGN §2).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "greedy.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

void greedy_select(std::uintptr_t scores, std::uintptr_t image_ids, int64_t B, int64_t H,
                   int64_t W, int64_t radius, std::uintptr_t offsets, std::uintptr_t ys,
                   std::uintptr_t xs, std::uintptr_t radii, std::uintptr_t whole, int64_t quota,
                   bool use_cutoff, float cut_score, int64_t cut_gidx, std::uintptr_t out_pix,
                   std::uintptr_t out_count, int num_threads) {
  cbda::PriorPicksView prior{ptr<const int64_t>(offsets), ptr<const int64_t>(ys),
                             ptr<const int64_t>(xs), ptr<const int64_t>(radii),
                             ptr<const uint8_t>(whole)};
  cbda::Cutoff cut{use_cutoff, cut_score, cut_gidx};
  py::gil_scoped_release nogil;
  cbda::greedy_select_batch(ptr<const float>(scores), ptr<const int64_t>(image_ids), B, H, W,
                            radius, prior, quota, cut, ptr<int64_t>(out_pix),
                            ptr<int64_t>(out_count), num_threads);
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
  m.def("greedy_select", &greedy_select,
        "Per-image greedy selection with blocking over a batch of float32 score maps.",
        py::arg("scores"), py::arg("image_ids"), py::arg("B"), py::arg("H"), py::arg("W"),
        py::arg("radius"), py::arg("offsets"), py::arg("ys"), py::arg("xs"), py::arg("radii"),
        py::arg("whole"), py::arg("quota"), py::arg("use_cutoff"), py::arg("cut_score"),
        py::arg("cut_gidx"), py::arg("out_pix"), py::arg("out_count"), py::arg("num_threads") = 0);
  m.def("has_openmp", &has_openmp);
  m.def("max_threads", &max_threads);
}
