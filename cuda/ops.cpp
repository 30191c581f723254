// Python entry points of the native module: the rasteriser (input checks, then dispatch to the CPU or CUDA kernels by
// device; called only by gsasr/render/_native.py, which prepares the per-Gaussian parameters and the tile ranges)
// and the networks' bf16 CPU kernels (network_cpu.cpp, attention_cpu.cpp; handed to the networks by
// gsasr.render.cpu_network_kernels, called through gsasr/archs/low_precision.py).
#include <torch/extension.h>

#include <tuple>
#include <utility>

namespace gsasr {

torch::Tensor boxes_cpu(const torch::Tensor& params, int64_t canvas_h, int64_t canvas_w, int64_t y0, int64_t x0,
                        int64_t h, int64_t w);
torch::Tensor render_cpu(const torch::Tensor& params, const torch::Tensor& boxes, const torch::Tensor& col_range,
                         const torch::Tensor& row_range, int64_t grid_w, int64_t tile, int64_t canvas_h,
                         int64_t canvas_w, int64_t y0, int64_t x0, int64_t h, int64_t w);
torch::Tensor render_terms_cpu(const torch::Tensor& centre, const torch::Tensor& sigma, const torch::Tensor& conic,
                               const torch::Tensor& colour, double dmax, double cutoff, int64_t grid_w,
                               int64_t canvas_h, int64_t canvas_w, int64_t y0, int64_t x0, int64_t h, int64_t w);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> terms_cpu(const torch::Tensor& gaussians,
                                                                                  const torch::Tensor& rho,
                                                                                  double step_h, double step_w,
                                                                                  int64_t canvas_h, int64_t canvas_w);

torch::Tensor residual_layer_norm_cpu(const torch::Tensor& x, const c10::optional<torch::Tensor>& term,
                                      const c10::optional<torch::Tensor>& gamma,
                                      const c10::optional<torch::Tensor>& beta, double eps, bool normalize,
                                      bool generic);
void rope_cpu_(const torch::Tensor& tokens, int64_t columns, int64_t width, const torch::Tensor& rotation,
               bool generic);
bool network_kernels_vectorized();
bool attention_available();
torch::Tensor window_attention_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   int64_t heads, double scale, const c10::optional<torch::Tensor>& bias);

#ifdef GSASR_WITH_CUDA
torch::Tensor boxes_cuda(const torch::Tensor& params, int64_t canvas_h, int64_t canvas_w, int64_t y0, int64_t x0,
                         int64_t h, int64_t w);
torch::Tensor render_cuda(const torch::Tensor& params, const torch::Tensor& boxes, const torch::Tensor& col_range,
                          const torch::Tensor& row_range, int64_t grid_w, int64_t tile, int64_t canvas_h,
                          int64_t canvas_w, int64_t y0, int64_t x0, int64_t h, int64_t w, bool compact);
#endif

namespace {

constexpr int64_t kParamCount = 11;

void check_geometry(int64_t canvas_h, int64_t canvas_w, int64_t y0, int64_t x0, int64_t h, int64_t w) {
  TORCH_CHECK(canvas_h >= 1 && canvas_w >= 1, "gsasr native: canvas must be positive, got ", canvas_h, "x",
              canvas_w);
  TORCH_CHECK(h >= 1 && w >= 1 && y0 >= 0 && x0 >= 0 && y0 + h <= canvas_h && x0 + w <= canvas_w,
              "gsasr native: region (", y0, ", ", x0, ", ", h, ", ", w, ") is not inside the canvas");
  TORCH_CHECK(canvas_h < (int64_t{1} << 30) && canvas_w < (int64_t{1} << 30),
              "gsasr native: canvas sides must be below 2^30 pixels");
}

void check_params(const torch::Tensor& params) {
  TORCH_CHECK(params.dim() == 2 && params.size(1) == kParamCount, "gsasr native: params must be [N, ", kParamCount,
              "], got ", params.sizes());
  TORCH_CHECK(params.scalar_type() == torch::kFloat32, "gsasr native: params must be float32, got ",
              params.scalar_type());
  TORCH_CHECK(params.is_contiguous(), "gsasr native: params must be contiguous");
}

bool has_cuda() {
#ifdef GSASR_WITH_CUDA
  return true;
#else
  return false;
#endif
}

torch::Tensor boxes(const torch::Tensor& params, int64_t canvas_h, int64_t canvas_w, int64_t y0, int64_t x0,
                    int64_t h, int64_t w) {
  check_params(params);
  check_geometry(canvas_h, canvas_w, y0, x0, h, w);
  if (params.is_cuda()) {
#ifdef GSASR_WITH_CUDA
    return boxes_cuda(params, canvas_h, canvas_w, y0, x0, h, w);
#else
    TORCH_CHECK(false, "gsasr native: built without CUDA");
#endif
  }
  TORCH_CHECK(params.is_cpu(), "gsasr native: params must be on the CPU or a CUDA device, got ", params.device());
  return boxes_cpu(params, canvas_h, canvas_w, y0, x0, h, w);
}

void check_render_inputs(const torch::Tensor& params, const torch::Tensor& boxes, const torch::Tensor& col_range,
                         const torch::Tensor& row_range, int64_t grid_w, int64_t tile, int64_t canvas_h,
                         int64_t canvas_w, int64_t y0, int64_t x0, int64_t h, int64_t w) {
  check_params(params);
  check_geometry(canvas_h, canvas_w, y0, x0, h, w);
  const int64_t n = params.size(0);
  TORCH_CHECK(boxes.scalar_type() == torch::kInt32 && boxes.is_contiguous() && boxes.dim() == 2 &&
                  boxes.size(0) == n && boxes.size(1) == 4,
              "gsasr native: boxes must be contiguous int32 [N, 4], got ", boxes.sizes(), " ", boxes.scalar_type());
  TORCH_CHECK(tile >= 1, "gsasr native: tile must be positive");
  const int64_t tiles_x = (w + tile - 1) / tile, tiles_y = (h + tile - 1) / tile;
  for (const auto* range : {&col_range, &row_range}) {
    TORCH_CHECK(range->scalar_type() == torch::kInt64 && range->is_contiguous() && range->dim() == 2 &&
                    range->size(1) == 2,
                "gsasr native: tile ranges must be contiguous int64 [tiles, 2], got ", range->sizes());
  }
  TORCH_CHECK(col_range.size(0) == tiles_x && row_range.size(0) == tiles_y, "gsasr native: expected ", tiles_x,
              " column ranges and ", tiles_y, " row ranges for tile ", tile);
  TORCH_CHECK(grid_w >= 1 && (n == 0 || n % grid_w == 0), "gsasr native: grid width ", grid_w,
              " does not divide the ", n, " Gaussians");
  // Every range must stay inside the grid: the kernels trust it for their loads. (A few hundred values.)
  const int64_t grid_h = n / grid_w;
  for (const auto& [range, limit] : {std::pair{col_range, grid_w}, std::pair{row_range, grid_h}}) {
    auto cpu = range.cpu();
    const int64_t* v = cpu.data_ptr<int64_t>();
    for (int64_t t = 0; t < cpu.size(0); ++t) {
      TORCH_CHECK(v[2 * t] > v[2 * t + 1] || (v[2 * t] >= 0 && v[2 * t + 1] < limit),
                  "gsasr native: tile range [", v[2 * t], ", ", v[2 * t + 1], "] outside the grid");
    }
  }
  const auto device = params.device();
  TORCH_CHECK(boxes.device() == device && col_range.device() == device && row_range.device() == device,
              "gsasr native: all inputs must be on ", device);
}

torch::Tensor render(const torch::Tensor& params, const torch::Tensor& boxes, const torch::Tensor& col_range,
                     const torch::Tensor& row_range, int64_t grid_w, int64_t tile, int64_t canvas_h, int64_t canvas_w,
                     int64_t y0, int64_t x0, int64_t h, int64_t w) {
  check_render_inputs(params, boxes, col_range, row_range, grid_w, tile, canvas_h, canvas_w, y0, x0, h, w);
  const auto device = params.device();
  if (params.is_cuda()) {
#ifdef GSASR_WITH_CUDA
    return render_cuda(params, boxes, col_range, row_range, grid_w, tile, canvas_h, canvas_w, y0, x0, h, w,
                       /*compact=*/false);
#else
    TORCH_CHECK(false, "gsasr native: built without CUDA");
#endif
  }
  TORCH_CHECK(params.is_cpu(), "gsasr native: params must be on the CPU or a CUDA device, got ", device);
  return render_cpu(params, boxes, col_range, row_range, grid_w, tile, canvas_h, canvas_w, y0, x0, h, w);
}

// CUDA only: the same image as render, bit for bit, visiting only each tile's hits (render_cuda.cu "compact").
torch::Tensor render_compact(const torch::Tensor& params, const torch::Tensor& boxes, const torch::Tensor& col_range,
                             const torch::Tensor& row_range, int64_t grid_w, int64_t tile, int64_t canvas_h,
                             int64_t canvas_w, int64_t y0, int64_t x0, int64_t h, int64_t w) {
  check_render_inputs(params, boxes, col_range, row_range, grid_w, tile, canvas_h, canvas_w, y0, x0, h, w);
  TORCH_CHECK(params.is_cuda(), "gsasr native: render_compact is a CUDA kernel, got inputs on ", params.device());
#ifdef GSASR_WITH_CUDA
  return render_cuda(params, boxes, col_range, row_range, grid_w, tile, canvas_h, canvas_w, y0, x0, h, w,
                     /*compact=*/true);
#else
  TORCH_CHECK(false, "gsasr native: built without CUDA");
#endif
}

// The CPU fast path: boxes, ellipses and tile ranges are computed in C++ from the terms of
// reference.gaussian_terms (centre [N, 2], sigma [N, 2], conic [N, 4], colour [N, 3]).
torch::Tensor render_terms(const torch::Tensor& centre, const torch::Tensor& sigma, const torch::Tensor& conic,
                           const torch::Tensor& colour, double dmax, double cutoff, int64_t grid_w, int64_t canvas_h,
                           int64_t canvas_w, int64_t y0, int64_t x0, int64_t h, int64_t w) {
  check_geometry(canvas_h, canvas_w, y0, x0, h, w);
  const int64_t n = centre.dim() == 2 ? centre.size(0) : -1;
  for (const auto& [term, width] : {std::pair{centre, 2}, std::pair{sigma, 2}, std::pair{conic, 4},
                                    std::pair{colour, 3}}) {
    TORCH_CHECK(term.dim() == 2 && term.size(0) == n && term.size(1) == width && term.is_contiguous() &&
                    term.scalar_type() == torch::kFloat32 && term.is_cpu(),
                "gsasr native: terms must be contiguous float32 CPU tensors [N, 2], [N, 2], [N, 4], [N, 3], got ",
                term.sizes(), " ", term.scalar_type(), " on ", term.device());
  }
  TORCH_CHECK(cutoff > 0.0 && dmax >= 0.0, "gsasr native: cutoff must be positive and dmax non-negative");
  TORCH_CHECK(grid_w >= 1 && n % grid_w == 0, "gsasr native: grid width ", grid_w, " does not divide the ", n,
              " Gaussians");
  if (n == 0) return torch::zeros({3, h, w}, centre.options());
  return render_terms_cpu(centre, sigma, conic, colour, dmax, cutoff, grid_w, canvas_h, canvas_w, y0, x0, h, w);
}


// The CPU per-Gaussian terms (centre, sigma, conic, colour) of reference.gaussian_terms, bit for bit, from the
// raw [N, 9] float32 parameters and rho = 0.999999 tanh(p2) computed by PyTorch (see terms_cpu.cpp).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> terms(const torch::Tensor& gaussians,
                                                                              const torch::Tensor& rho, double step_h,
                                                                              double step_w, int64_t canvas_h,
                                                                              int64_t canvas_w) {
  TORCH_CHECK(gaussians.dim() == 2 && gaussians.size(1) == 9 && gaussians.is_contiguous() &&
                  gaussians.scalar_type() == torch::kFloat32 && gaussians.is_cpu(),
              "gsasr native: gaussians must be a contiguous float32 CPU tensor [N, 9], got ", gaussians.sizes(), " ",
              gaussians.scalar_type(), " on ", gaussians.device());
  TORCH_CHECK(rho.dim() == 1 && rho.size(0) == gaussians.size(0) && rho.is_contiguous() &&
                  rho.scalar_type() == torch::kFloat32 && rho.is_cpu(),
              "gsasr native: rho must be a contiguous float32 CPU tensor [N], got ", rho.sizes());
  TORCH_CHECK(canvas_h >= 1 && canvas_w >= 1, "gsasr native: canvas must be positive, got ", canvas_h, "x",
              canvas_w);
  TORCH_CHECK(step_h > 0.0 && step_w > 0.0, "gsasr native: steps must be positive");
  return terms_cpu(gaussians, rho, step_h, step_w, canvas_h, canvas_w);
}
}  // namespace
}  // namespace gsasr

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "GSASR native rasteriser and CPU network kernels (built by install.py; loaded by gsasr.render only)";
  m.def("has_cuda", &gsasr::has_cuda, "True when this build contains the CUDA kernels");
  m.def("boxes", &gsasr::boxes, "Per-Gaussian region-local pixel boxes [N, 4] int32 (x0, x1, y0, y1)");
  m.def("render", &gsasr::render, "Gather-render the region: [3, h, w] float32");
  m.def("render_compact", &gsasr::render_compact,
        "CUDA: render, each tile walking only the candidates whose box meets it (same result bit for bit)");
  m.def("terms", &gsasr::terms, "CPU: per-Gaussian terms (centre, sigma, conic, colour), as reference.gaussian_terms");
  m.def("render_terms", &gsasr::render_terms,
        "CPU: render the region from the per-Gaussian terms (k-sigma ellipses, tile ranges found here)");
  m.def("residual_layer_norm", &gsasr::residual_layer_norm_cpu,
        "CPU, networks' bf16 path: x += term in place, then LayerNorm(x) rounded to bf16 (when normalize)",
        py::arg("x"), py::arg("term"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("normalize"), py::arg("generic") = false);
  m.def("rope_", &gsasr::rope_cpu_,
        "CPU, networks' bf16 path: rotate the first `columns` bf16 channels of every token by mixed 2-D RoPE",
        py::arg("tokens"), py::arg("columns"), py::arg("width"), py::arg("rotation"), py::arg("generic") = false);
  m.def("network_kernels_vectorized", &gsasr::network_kernels_vectorized,
        "True when this CPU runs residual_layer_norm and rope_ vectorised (AVX-512 with bf16 conversions)");
  m.def("attention_available", &gsasr::attention_available,
        "True when window_attention runs on this CPU (AVX-512 with bf16, PyTorch's bf16 brgemm)");
  m.def("window_attention", &gsasr::window_attention_cpu,
        "CPU, networks' bf16 path: softmax(q k^T scale + bias) v per window and head, bf16 (windows, tokens, "
        "channels)", py::arg("q"), py::arg("k"), py::arg("v"), py::arg("heads"), py::arg("scale"),
        py::arg("bias") = py::none());
}
