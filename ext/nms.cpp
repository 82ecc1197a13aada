// Python binding of the NMS / merge kernel (ext/nms_core.hpp), compiled twin of
// edge/kernels/nms.py: nms_reference and merge_reference, same arguments, same results.
// Buffers come through the buffer protocol only (no numpy headers, so a cross build needs no
// target numpy). The Python layer validates; these checks only keep a direct caller from crashing
// the interpreter with wrong shapes, dtypes or values.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "nms_core.hpp"

namespace py = pybind11;

namespace {

// Buffer format without a native byte-order/size prefix ('@', '=', and '<' on little-endian hosts).
std::string bare_format(const py::buffer_info& info) {
    std::string f = info.format;
    const uint16_t probe = 1;
    const bool little = *reinterpret_cast<const uint8_t*>(&probe) == 1;
    if (!f.empty() && (f[0] == '@' || f[0] == '=' || (little && f[0] == '<'))) f.erase(0, 1);
    return f;
}

void check_kind(const py::buffer_info& info, const char* name, bool is_float) {
    const std::string f = bare_format(info);
    const bool ok = is_float ? (f == "f" && info.itemsize == 4)
                             : ((f == "q" || f == "l") && info.itemsize == 8);
    if (!ok) throw py::value_error(std::string(name) + (is_float ? " must be float32" : " must be int64"));
}

// C-contiguous (n, 4) float32 or (n,) float32/int64; returns n.
int64_t check_rows(const py::buffer_info& info, const char* name, bool is_float, int ndim) {
    check_kind(info, name, is_float);
    if (info.ndim != ndim || (ndim == 2 && info.shape[1] != 4))
        throw py::value_error(std::string(name) + (ndim == 2 ? " must have shape (N, 4)" : " must be 1-D"));
    const int64_t n = info.shape[0];
    const bool contiguous = ndim == 2
        ? (n <= 1 || info.strides[0] == 4 * info.itemsize) && info.strides[1] == info.itemsize
        : (n <= 1 || info.strides[0] == info.itemsize);
    if (!contiguous) throw py::value_error(std::string(name) + " must be C-contiguous");
    return n;
}

void check_length(int64_t got, int64_t want, const char* name) {
    if (got != want)
        throw py::value_error(std::string(name) + " must have " + std::to_string(want) + " rows, got " +
                              std::to_string(got));
}

void check_inputs(const float* boxes, const float* scores, int64_t n) {
    if (n >= INT32_MAX) throw py::value_error("boxes: at most 2**31 - 2 boxes");
    for (int64_t i = 0; i < n; ++i) {
        const float* b = boxes + 4 * i;
        if (!(std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) && std::isfinite(b[3])))
            throw py::value_error("boxes must be finite: row " + std::to_string(i));
        if (b[2] < b[0] || b[3] < b[1])
            throw py::value_error("boxes need x2 >= x1 and y2 >= y1: row " + std::to_string(i));
        if (!std::isfinite(scores[i]))
            throw py::value_error("scores must be finite: index " + std::to_string(i));
    }
}

void check_threshold(double t, const char* name) {
    if (!(t >= 0.0 && t <= 1.0)) throw py::value_error(std::string(name) + " must be in [0, 1]");
}

struct Inputs {
    py::buffer_info boxes, scores, class_ids;
    const int64_t* cls = nullptr;
    int64_t n = 0;
};

Inputs take_inputs(const py::buffer& boxes, const py::buffer& scores, const py::object& class_ids,
                   double score_threshold) {
    Inputs in;
    in.boxes = boxes.request();
    in.n = check_rows(in.boxes, "boxes", true, 2);
    in.scores = scores.request();
    check_length(check_rows(in.scores, "scores", true, 1), in.n, "scores");
    if (!class_ids.is_none()) {
        in.class_ids = py::reinterpret_borrow<py::buffer>(class_ids).request();
        check_length(check_rows(in.class_ids, "class_ids", false, 1), in.n, "class_ids");
        in.cls = static_cast<const int64_t*>(in.class_ids.ptr);
    }
    if (std::isnan(score_threshold)) throw py::value_error("score_threshold must not be NaN");
    check_inputs(static_cast<const float*>(in.boxes.ptr), static_cast<const float*>(in.scores.ptr), in.n);
    return in;
}

py::buffer_info take_output(const py::buffer& b, const char* name, bool is_float, int ndim, int64_t n) {
    py::buffer_info info = b.request(true);
    check_length(check_rows(info, name, is_float, ndim), n, name);
    return info;
}

int64_t nms_py(const py::buffer& boxes, const py::buffer& scores, const py::object& class_ids,
               double iou_threshold, double score_threshold, int64_t max_detections, const py::buffer& out) {
    Inputs in = take_inputs(boxes, scores, class_ids, score_threshold);
    check_threshold(iou_threshold, "iou_threshold");
    py::buffer_info o = take_output(out, "out", false, 1, in.n);
    int64_t kept;
    {
        py::gil_scoped_release nogil;
        kept = edge_nms::nms(static_cast<const float*>(in.boxes.ptr),
                             static_cast<const float*>(in.scores.ptr), in.cls, in.n, iou_threshold, score_threshold,
                             max_detections < 0 ? -1 : max_detections, static_cast<int64_t*>(o.ptr));
    }
    return kept;
}

int64_t merge_py(const py::buffer& boxes, const py::buffer& scores, const py::object& class_ids,
                 bool class_aware, bool nmm, bool ios, double threshold, double score_threshold,
                 const py::buffer& out_boxes, const py::buffer& out_scores, const py::buffer& out_class_ids,
                 const py::buffer& out_keep, const py::buffer& out_members) {
    Inputs in = take_inputs(boxes, scores, class_ids, score_threshold);
    check_threshold(threshold, "threshold");
    py::buffer_info ob = take_output(out_boxes, "out_boxes", true, 2, in.n);
    py::buffer_info os = take_output(out_scores, "out_scores", true, 1, in.n);
    py::buffer_info oc = take_output(out_class_ids, "out_class_ids", false, 1, in.n);
    py::buffer_info ok = take_output(out_keep, "out_keep", false, 1, in.n);
    py::buffer_info om = take_output(out_members, "out_members", false, 1, in.n);
    int64_t m;
    {
        py::gil_scoped_release nogil;
        m = edge_nms::merge(static_cast<const float*>(in.boxes.ptr), static_cast<const float*>(in.scores.ptr),
                            in.cls, in.n, class_aware, nmm, ios, threshold, score_threshold,
                            static_cast<float*>(ob.ptr), static_cast<float*>(os.ptr),
                            static_cast<int64_t*>(oc.ptr), static_cast<int64_t*>(ok.ptr),
                            static_cast<int64_t*>(om.ptr));
    }
    return m;
}

}  // namespace

PYBIND11_MODULE(_nms, m) {
    m.doc() = "Greedy NMS and cross-tile merge; compiled twin of edge/kernels/nms.py.";
    m.def("nms", &nms_py, py::arg("boxes"), py::arg("scores"), py::arg("class_ids"), py::arg("iou_threshold"),
          py::arg("score_threshold"), py::arg("max_detections"), py::arg("out"),
          "Greedy NMS into out (N,) int64; returns the number kept (see nms_reference).");
    m.def("merge", &merge_py, py::arg("boxes"), py::arg("scores"), py::arg("class_ids"),
          py::arg("class_aware"), py::arg("merge"), py::arg("ios"), py::arg("threshold"), py::arg("score_threshold"),
          py::arg("out_boxes"), py::arg("out_scores"), py::arg("out_class_ids"), py::arg("out_keep"),
          py::arg("out_members"),
          "Group / merge into the (N, ...) outputs; returns the number of groups "
          "(see merge_reference).");
}
