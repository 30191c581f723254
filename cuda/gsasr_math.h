// The arithmetic of the GSASR rasteriser, shared by the CPU and CUDA kernels so that both compute exactly the
// same float32 values as gsasr/render/reference.py (the specification): same window test, same order of
// operations in the quadratic form, same clamp of the exponent. Nothing here allocates or knows about tensors.
//
// Every kernel is compiled without floating-point contraction (-ffp-contract=off, nvcc -fmad=false): the
// quadratic form cancels badly when |rho| -> 1, so a fused multiply-add would change the weight, not just its
// last bit, and the kernels would stop agreeing with the reference there.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define GSASR_HD __host__ __device__ __forceinline__
#else
#define GSASR_HD inline
#endif

namespace gsasr {

// Per-Gaussian parameters, one row of 11 float32 in this order (built by gsasr/render/_native.py from
// gaussian_terms(): the activations and unit conversion are done once, in PyTorch, for every backend).
enum Param : int { kCx, kCy, kRx, kRy, kA, kB, kC, kD, kR, kG, kBlue, kParams };

// Exponents below this give float32 subnormals (slow, and invisible in a sum); the reference clamps here too.
// Above kExpCeil exp would overflow; the quadratic form can only go slightly negative (float cancellation), so
// that clamp never bites in practice.
constexpr float kExpFloor = -87.0f;
constexpr float kExpCeil = 88.0f;

GSASR_HD double floor_d(double x) {
#if defined(__CUDA_ARCH__)
  return ::floor(x);
#else
  return std::floor(x);
#endif
}

// Normalised align-corners coordinate of pixel j of an n-pixel axis, float32(2j/(n-1) - 1) computed in double
// as the official kernel does; a 1-pixel axis puts its pixel at 0 (the reference's extension).
GSASR_HD float pixel_coord(int64_t j, int64_t n) {
  return n == 1 ? 0.0f : static_cast<float>(2.0 * static_cast<double>(j) / static_cast<double>(n - 1) - 1.0);
}

// The official window test on one axis: the float32 difference must satisfy |d| <= radius.
GSASR_HD bool inside(int64_t j, float centre, float radius, int64_t n) {
  const float d = pixel_coord(j, n) - centre;
  return !(d > radius || d < -radius);
}

// First and last pixel of the region [start, start + length) passing the window test on one axis. The passing
// pixels form one interval (pixel_coord is non-decreasing, float subtraction is monotone). Its ends are
// estimated in double (error far below a pixel), then settled with the float32 test itself, so the interval is
// exactly the reference's. Returns false when no pixel of the region passes.
GSASR_HD bool axis_span(float centre, float radius, int64_t n, int64_t start, int64_t length, int32_t* first,
                        int32_t* last) {
  const double c = centre, r = radius;
  double lo_est = c - r, hi_est = c + r;
  if (n > 1) {
    const double half = (n - 1) / 2.0;
    lo_est = (c - r + 1.0) * half;
    hi_est = (c + r + 1.0) * half;
  }
  const double end = static_cast<double>(start + length - 1);
  // Clamp in double before converting, so far-away centres cannot overflow the integer.
  double lo_d = floor_d(lo_est) - 1.0, hi_d = -floor_d(-hi_est) + 1.0;  // ceil(hi_est) + 1
  lo_d = lo_d < start ? start : (lo_d > end ? end : lo_d);
  hi_d = hi_d < start ? start : (hi_d > end ? end : hi_d);
  int64_t lo = static_cast<int64_t>(lo_d), hi = static_cast<int64_t>(hi_d);
  while (lo <= hi && !inside(lo, centre, radius, n)) ++lo;
  while (hi >= lo && !inside(hi, centre, radius, n)) --hi;
  *first = static_cast<int32_t>(lo);
  *last = static_cast<int32_t>(hi);
  return lo <= hi;
}

GSASR_HD float bits_to_float(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// exp(e) for e in [kExpFloor, kExpCeil], within ~2 float32 ulps, branch-free so that compilers vectorise the
// CPU pixel loop (a call to expf would not be). Range reduction e = n ln2 + t with |t| <= ln2/2 (ln2 split in
// two parts so n ln2 is exact), then a degree-7 Taylor polynomial (truncation < 6e-9 relative), times 2^n built
// from its exponent bits. The same code runs on the GPU, so both backends round identically.
GSASR_HD float exp_bounded(float e) {
  // floor(e log2e + 1/2) by truncating a positive number (e >= kExpFloor): plain conversions vectorise.
  const int32_t k = static_cast<int32_t>(e * 1.44269504f + 128.5f) - 128;
  const float n = static_cast<float>(k);
  const float t = (e - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * t + 1.0f / 720.0f;
  p = p * t + 1.0f / 120.0f;
  p = p * t + 1.0f / 24.0f;
  p = p * t + 1.0f / 6.0f;
  p = p * t + 0.5f;
  p = p * t + 1.0f;
  p = p * t + 1.0f;
  return p * bits_to_float((k + 127) << 23);
}

// The weight of a Gaussian at offset (dx, dy), given the row term cdy2 = (C dy) dy. Operation order is the
// reference's: ((A dx) dx - (B dx) dy + (C dy) dy) * D, then exp, then the flush of tiny weights.
GSASR_HD float weight(float dx, float dy, float cdy2, float a, float b, float d) {
  float e = ((a * dx) * dx - (b * dx) * dy + cdy2) * d;
  // min/max (not branches) so the CPU loop vectorises (with -ffinite-math-only, see _build.py).
#if defined(__CUDA_ARCH__)
  e = fminf(fmaxf(e, kExpFloor), kExpCeil);
#else
  e = __builtin_fminf(__builtin_fmaxf(e, kExpFloor), kExpCeil);
#endif
  // Unlike the reference we keep, rather than zero, weights in (exp(-87), 1e-37]: below 1e-37 each, they cannot
  // show in a float32 sum, and a select here stops GCC vectorising the loop.
  return exp_bounded(e);
}

}  // namespace gsasr
