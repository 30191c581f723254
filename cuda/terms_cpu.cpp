// CPU: the per-Gaussian terms of gsasr/render/reference.py's gaussian_terms in one fused pass, bit for bit.
//
// The reference is a chain of ~30 PyTorch tensor ops (each a pass over N values, most allocating); at 1 M
// Gaussians it costs as much as a quarter of the native render. Here every value is computed by the same IEEE
// operations, in the same order and precision, so each float is identical: float32 operations whose operand is
// a Python scalar use that scalar rounded to float32 (PyTorch's rule for a float32 tensor op with a Python
// number); the double steps are the same double operations; `x / tensor` is PyTorch's `reciprocal(tensor) * x`.
// tests/render/test_native_terms.py checks bitwise equality against the reference on random and extreme
// inputs.
//
// Two things are left to PyTorch on purpose (the caller passes them in):
// * rho = 0.999999 * tanh(p2). tanh comes from PyTorch's own kernels, and rho must match to the bit: D depends
//   on 1 - rho^2, which for |rho| -> 1 turns one ulp of rho into percents of the weight.
// * nothing else: the sigmoids are PyTorch's scalar formula 1 / (1 + exp(-x)) (the reference applies them to
//   strided columns, which PyTorch evaluates with that formula and the C library's expf, as here). A sigmoid
//   off by an ulp would only move sigma or a colour by an ulp (~1e-7 relative), far inside the 1e-5 contract.
#include <ATen/Parallel.h>
#include <ATen/ATen.h>

#include <cmath>
#include <tuple>

namespace gsasr {

namespace {

// PyTorch's scalar sigmoid for float32.
inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// One axis of to_kernel_units (reference.py): the align-corners centre and the std in normalised units, for
// a mean in [0, 1] of the padded LR extent and a sigma in LR pixels.
struct AxisUnits {
  float offset;     // float32(1 / n)
  float n;          // float32(n)
  float n_minus_1;  // float32(n - 1)
  float step;       // float32(step): STEP_NUMERATOR / scale, rounded
  bool single;      // n == 1: pixel units (the reference's extension)

  void apply(float mean, float sigma, float* centre, float* std_out) const {
    const float u = mean * 2.0f - 1.0f;
    if (single) {
      *centre = u * 0.5f;
      *std_out = sigma / step;
      return;
    }
    *centre = (u + 1.0f - offset) * n / n_minus_1 - 1.0f;
    *std_out = sigma / step * 2.0f / n_minus_1;
  }
};

AxisUnits axis_units(int64_t n, double step) {
  return AxisUnits{static_cast<float>(1.0 / static_cast<double>(n)), static_cast<float>(n),
                   static_cast<float>(n - 1), static_cast<float>(step), n == 1};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> terms_cpu(const at::Tensor& gaussians,
                                                                      const at::Tensor& rho, double step_h,
                                                                      double step_w, int64_t canvas_h,
                                                                      int64_t canvas_w) {
  const int64_t n = gaussians.size(0);
  const auto options = gaussians.options();
  auto centre = at::empty({n, 2}, options), sigma = at::empty({n, 2}, options);
  auto conic = at::empty({n, 4}, options), colour = at::empty({n, 3}, options);
  const float* g = gaussians.data_ptr<float>();
  const float* r = rho.data_ptr<float>();
  float* out_centre = centre.data_ptr<float>();
  float* out_sigma = sigma.data_ptr<float>();
  float* out_conic = conic.data_ptr<float>();
  float* out_colour = colour.data_ptr<float>();
  const AxisUnits along_w = axis_units(canvas_w, step_w), along_h = axis_units(canvas_h, step_h);
  const float sigma_gain = static_cast<float>(0.99999), sigma_floor = static_cast<float>(1e-6);
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* p = g + 9 * i;
      const float sigma_a = sigma_gain * sigmoid(p[0]) + sigma_floor;  // the height axis (official "sigma_x")
      const float sigma_b = sigma_gain * sigmoid(p[1]) + sigma_floor;  // the width axis
      const float alpha = sigmoid(p[3]);
      for (int k = 0; k < 3; ++k) out_colour[3 * i + k] = sigmoid(p[4 + k]) * alpha;
      float cx, cy, sig_w, sig_h;
      along_w.apply(p[7], sigma_b, &cx, &sig_w);
      along_h.apply(p[8], sigma_a, &cy, &sig_h);
      out_centre[2 * i] = cx;
      out_centre[2 * i + 1] = cy;
      out_sigma[2 * i] = sig_w;
      out_sigma[2 * i + 1] = sig_h;
      const float rh = r[i];
      const double sw = sig_w, sh = sig_h;
      out_conic[4 * i] = static_cast<float>(1.0 / sw / sw);
      out_conic[4 * i + 1] = rh * 2.0f / sig_w / sig_h;
      out_conic[4 * i + 2] = static_cast<float>(1.0 / sh / sh);
      out_conic[4 * i + 3] = static_cast<float>(1.0 / static_cast<double>(1.0f - rh * rh) * -0.5);
    }
  });
  return {centre, sigma, conic, colour};
}

}  // namespace gsasr
