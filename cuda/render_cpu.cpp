// CPU kernels of the native rasteriser: per-Gaussian pixel boxes, and the gather over output tiles.
//
// Gather: each output tile (kTileH x kTileW pixels) walks the Gaussians that can reach it, accumulates their
// weighted colours in a small local buffer (L1-resident), and writes its pixels once. Tiles are handed out to
// the threads one at a time (an atomic counter) and never share a pixel, so there are no atomics on pixels and
// the summation order is fixed. The Gaussians a tile walks are a rectangle of the Gaussian grid (row-major,
// grid_w per row), chosen from the actual pixel boxes, so no Gaussian that reaches the tile is ever missed.
//
// Two entry points share the tile kernel:
// * render_terms_cpu: the fast path. From the per-Gaussian terms it computes, in one parallel pass, each
//   Gaussian's box, its k-sigma ellipse (below), the grid unions and the tile ranges, then renders.
// * render_cpu: the generic path of ops.cpp (params [N, 11], boxes and tile ranges given by the caller); it
//   has no k, so it renders whole boxes.
//
// Ellipse spans. The reference's support is a box (the float32 window test on each axis); inside it, a pixel
// whose weight x colour is below exp(-k^2/2) cannot show in the sums (see NATIVE_SIGMA_CUTOFF in _native.py).
// Those pixels are where the quadratic form exceeds k^2 (in sigma units, less for dark Gaussians), i.e. outside
// an ellipse that covers ~60 % of the box on average. Per row we compute the ellipse's x-interval, widened so
// that every skipped pixel is provably below the bound *as the reference rounds it* (float32 cancellation when
// |rho| -> 1 is budgeted, see ellipse_shape), and intersect it with the box. The window test itself is never
// approximated: it is searched exactly, or skipped on an axis where it provably passes for the whole ellipse
// (window_holds_ellipse).
#include <ATen/Parallel.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#define GSASR_HAVE_MXCSR 1
#endif

// The AVX2 + FMA pixel loop is compiled for those instructions only (function target attributes) and chosen at
// run time, so the module itself stays baseline x86-64 and loads on any CPU.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define GSASR_HAVE_AVX2_PATH 1
#define GSASR_AVX2 __attribute__((target("avx2,fma")))
#endif

#include "gsasr_math.h"

namespace gsasr {

namespace {

// Flush-to-zero and denormals-are-zero for the current thread while a kernel runs. Products of a far weight
// (down to exp(-87)) and a dark colour fall into float32 subnormals, which cost ~100 cycles each on x86; they
// are below 1.2e-38, far under anything a pixel sum can show. The previous mode is restored on exit.
class FlushDenormals {
 public:
  FlushDenormals() {
#ifdef GSASR_HAVE_MXCSR
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040);  // FTZ (bit 15) | DAZ (bit 6)
#endif
  }
  ~FlushDenormals() {
#ifdef GSASR_HAVE_MXCSR
    _mm_setcsr(saved_);
#endif
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  unsigned int saved_ = 0;
};

// Output tiles are 32 rows of 64 pixels: wide enough that few Gaussians (~20 px across) are split between
// two tiles side by side (each split repeats the per-row setup), small enough that the accumulator (28 KB)
// stays in L1. kTile is the square tile of the generic entry point (ops.cpp), whose ranges are merged in pairs.
constexpr int64_t kTile = 32;
constexpr int64_t kTileH = 32, kTileW = 64;
constexpr int32_t kLanes = 8;  // pixels per vector step (AVX2 floats)
// Row stride of the tile accumulator: a vector starting near the tile's right edge spills into the padding,
// never into the next row.
constexpr int64_t kStride = kTileW + kLanes;
// Pixels of slack on each end of an ellipse row span: covers the float32 evaluation of the span (its values
// are box-relative, a few hundred pixels at most, so their rounding is ~1e-4 px).
constexpr float kSpanMarginPx = 0.05f;

// A Gaussian's k-sigma ellipse on the pixel grid, for one region: on a row at normalised offset dy from the
// centre, the pixels to visit are those whose x (region-local, relative to the box's first column) lies in
// centre + slope * dy +- sqrt(half2 - shrink * dy^2). A whole box is slope = shrink = 0, half2 = huge.
struct Ellipse {
  float centre, slope, half2, shrink;
};

constexpr Ellipse kWholeBox{0.0f, 0.0f, 1e30f, 0.0f};

// Per-Gaussian terms as the tile kernel reads them: pointers and row strides (in floats) into the caller's
// tensors, which may be one [N, 11] params array or separate [N, 2] / [N, 4] / [N, 3] tensors.
struct Terms {
  const float* centre;  // cx, cy
  int64_t centre_stride;
  const float* conic;  // A, B, C, D
  int64_t conic_stride;
  const float* colour;  // r, g, b
  int64_t colour_stride;
};

// The region being rendered: its canvas, and its window (y0, x0, h, w) of that canvas.
struct Region {
  int64_t canvas_h, canvas_w, y0, x0, h, w;
};

bool finite_bits(float v) {  // std::isfinite is folded to true under -ffinite-math-only
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return (bits & 0x7f800000u) != 0x7f800000u;
}

// Pixels per normalised unit on an axis of n pixels (the align-corners map j -> 2j/(n-1) - 1).
double pixels_per_unit(int64_t n) { return (n - 1) / 2.0; }

// Row and column ranges of one axis where the ellipse can be, region-local and inclusive, intersected with
// [*first, *last]. extent is the ellipse's half-extent on that axis in normalised units.
void clip_axis(double centre, double extent, int64_t n, int64_t start, int32_t* first, int32_t* last) {
  const double scale = pixels_per_unit(n), c = (centre + 1.0) * scale - static_cast<double>(start);
  const double lo = std::ceil(c - extent * scale - kSpanMarginPx), hi = std::floor(c + extent * scale + kSpanMarginPx);
  if (lo > *first) *first = lo > *last ? *last + 1 : static_cast<int32_t>(lo);
  if (hi < *last) *last = hi < *first ? *first - 1 : static_cast<int32_t>(hi);
}

// The ellipse outside which every weight, as the reference computes it in float32, is below exp(-k^2/2)
// (ellipse_shape), and the box (region-local, inclusive) tightened to it (fit_ellipse). Not used when it cannot
// help (1-pixel axes, non-finite terms): the whole box is rendered.
//
// The reference evaluates E = D * ((A dx) dx - (B dx) dy + (C dy) dy) in float32. Inside the box every term of
// the form is at most k^2 (|dx| <= k sig_w, A = 1/sig_w^2, likewise dy; |B dx dy| <= 2 k^2), so the float32
// result is within ~8 ulp * 4 k^2 of the exact form of the same float A, B, C, and E within |D| times that;
// |D| = 0.5 / (1 - rho^2) is what makes this matter for |rho| -> 1. We therefore keep every pixel where the
// exact form (real dx, dy; the float A, B, C) is within k^2/2 + slack of zero after scaling by |D|, with the
// slack twice that bound: any pixel left out has a float32 weight below exp(-k^2/2).
//
// What a left-out pixel loses is weight x colour, so the bound is on that product: a Gaussian whose brightest
// channel is c < 1 keeps the pixels where its weight is at least exp(-k^2/2) / c, i.e. the ellipse of
// k_eff^2 = k^2 + 2 ln c (visible_k2). Every contribution left out is still below exp(-k^2/2) (times 1, the
// largest colour); the rounding slack is kept at its size for the whole k-sigma box.
struct EllipseShape {
  double bound, inv_a, slope, shrink_y;  // keep (A dx^2 - B dx dy + C dy^2) <= bound
  double extent_x, extent_y;             // half-extents in normalised units; 0 when that axis cannot be cut
};

// The bound and the shape of the ellipse above; false when it cannot help (1-pixel axes, non-finite or
// degenerate terms).
bool ellipse_shape(const float* conic, float cutoff, double visible_k2, const Region& region, EllipseShape* out) {
  const float a32 = conic[0], b32 = conic[1], c32 = conic[2], d32 = conic[3];
  if (region.canvas_w == 1 || region.canvas_h == 1 || !finite_bits(a32) || !finite_bits(b32) ||
      !finite_bits(c32) || !finite_bits(d32) || !(a32 > 0.0f) || !(c32 > 0.0f) || !(d32 < 0.0f)) {
    return false;
  }
  const double a = a32, b = b32, c = c32, d = -static_cast<double>(d32), k2 = static_cast<double>(cutoff) * cutoff;
  const double slack = d * 1e-6 * 4.0 * k2 + 1e-3;
  out->bound = (0.5 * std::min(visible_k2, k2) + slack) / d;
  // Completing the square in dx: A (dx - s dy)^2 + (C - B^2 / 4A) dy^2 <= bound; likewise in dy.
  // (Reciprocals: this runs once per Gaussian, and double divisions are its slowest part.)
  const double quarter_b2 = 0.25 * b * b;
  out->inv_a = 1.0 / a;
  out->slope = 0.5 * b * out->inv_a;
  out->shrink_y = c - quarter_b2 * out->inv_a;
  const double shrink_x = a - quarter_b2 / c;
  out->extent_y = out->shrink_y > 0.0 ? std::sqrt(out->bound / out->shrink_y) : 0.0;
  out->extent_x = shrink_x > 0.0 ? std::sqrt(out->bound / shrink_x) : 0.0;
  return true;
}

// True when every pixel that clip_axis keeps for this extent passes the official float32 window test
// |float(coord) - centre| <= radius: then that axis's box is just the ellipse's, and the exact window span
// need not be searched. clip_axis keeps pixels up to kSpanMarginPx beyond the extent; float32 rounding of the
// coordinate and of the difference is below 1e-6 (2 + |centre|) normalised units.
bool window_holds_ellipse(float centre, double extent, float radius, int64_t n) {
  if (!(extent > 0.0) || !finite_bits(centre)) return false;
  const double reach = extent + kSpanMarginPx / pixels_per_unit(n) + 1e-6 * (2.0 + std::fabs(static_cast<double>(centre)));
  return reach < static_cast<double>(radius);
}

// The ellipse of a shape on the pixel grid, with the box (region-local, inclusive) tightened to it.
Ellipse fit_ellipse(const EllipseShape& shape, const float* centre, const Region& region, int32_t box[4]) {
  if (shape.extent_y > 0.0) clip_axis(centre[1], shape.extent_y, region.canvas_h, region.y0, &box[2], &box[3]);
  if (shape.extent_x > 0.0) clip_axis(centre[0], shape.extent_x, region.canvas_w, region.x0, &box[0], &box[1]);
  const double px = pixels_per_unit(region.canvas_w);
  Ellipse e;
  e.centre = static_cast<float>((centre[0] + 1.0) * px - static_cast<double>(region.x0) - box[0]);
  e.slope = static_cast<float>(shape.slope * px);
  e.half2 = static_cast<float>(shape.bound * shape.inv_a * px * px);
  e.shrink = static_cast<float>(shape.shrink_y * shape.inv_a * px * px);
  return e;
}

// k_eff^2 = k^2 + 2 ln(brightest channel) of the ellipse (k^2 when no channel is below 1, or one is not a
// number); <= 0 when the Gaussian cannot reach exp(-k^2/2) anywhere. Colours are sigmoid x alpha, in [0, 1].
double visible_cutoff2(const float* colour, float cutoff) {
  const double k2 = static_cast<double>(cutoff) * cutoff;
  const float brightest = std::max(colour[0], std::max(colour[1], colour[2]));
  if (!(brightest < 1.0f) || !finite_bits(colour[0]) || !finite_bits(colour[1]) || !finite_bits(colour[2])) return k2;
  if (!(brightest > 0.0f)) return -1.0;
  return k2 + 2.0 * static_cast<double>(std::log(brightest));  // float log: ~1e-7 relative, far inside the slack
}

// One Gaussian clipped to one tile: everything a splat function needs.
struct Splat {
  float cx, cy, a, b, c, d, red, green, blue;
  Ellipse ellipse;
  int32_t box_x0;          // the Gaussian's first column (the ellipse centre is relative to it)
  int32_t xa, xb, ya, yb;  // its box intersected with the tile, region-local, inclusive
};

// The tile being accumulated: region pixel coordinates (padded to whole tiles plus a vector) and the three
// colour planes of the accumulator, kStride floats per row, for the tile whose top-left pixel is (tx0, ty0).
struct TileView {
  const float* gx;
  const float* gy;
  int32_t tx0, ty0;
  float* acc[3];
};

// First and last column (region-local) to visit on a row at normalised offset dy, inside [lo, hi]. Returns
// false when the row has none.
inline bool row_span(const Ellipse& e, float dy, int32_t box_x0, int32_t lo, int32_t hi, int32_t* first,
                     int32_t* last) {
  const float c = e.centre + e.slope * dy;
  const float half = std::sqrt(std::max(e.half2 - e.shrink * (dy * dy), 0.0f));
  // Clamp in float before converting: a whole-box span is +-1e15.
  const float f = std::max(std::ceil(c - half - kSpanMarginPx) + static_cast<float>(box_x0), static_cast<float>(lo));
  const float l = std::min(std::floor(c + half + kSpanMarginPx) + static_cast<float>(box_x0), static_cast<float>(hi));
  if (!(f <= l)) return false;
  *first = static_cast<int32_t>(f);
  *last = static_cast<int32_t>(l);
  return true;
}

// Add one Gaussian into the tile. Portable version (the row loop is vectorised by the compiler for the baseline
// ISA), using the shared weight() of gsasr_math.h.
void splat_generic(const Splat& s, const TileView& tile) {
  for (int32_t y = s.ya; y <= s.yb; ++y) {
    const float dy = tile.gy[y] - s.cy;
    int32_t first, last;
    if (!row_span(s.ellipse, dy, s.box_x0, s.xa, s.xb, &first, &last)) continue;
    const float cdy2 = (s.c * dy) * dy;
    const int64_t at = static_cast<int64_t>(y - tile.ty0) * kStride + (first - tile.tx0);
    const float* __restrict__ xs = tile.gx + first;
    float* __restrict__ ar = tile.acc[0] + at;
    float* __restrict__ ag = tile.acc[1] + at;
    float* __restrict__ ab = tile.acc[2] + at;
    for (int32_t k = 0; k <= last - first; ++k) {
      const float v = weight(xs[k] - s.cx, dy, cdy2, s.a, s.b, s.d);
      ar[k] += v * s.red;
      ag[k] += v * s.green;
      ab[k] += v * s.blue;
    }
  }
}

#ifdef GSASR_HAVE_AVX2_PATH
// 2^t for t >= -125.5 (exp(-87) scaled by log2 e), 8 lanes: t = n + f with |f| <= 1/2, a degree-6 polynomial for
// 2^f (fitted for relative error, 2e-9; with FMA rounding ~1e-7), times 2^n added into the exponent bits. The
// polynomial is evaluated by Estrin's scheme: 3 dependent FMAs instead of Horner's 6, for 2 extra multiplies,
// which keeps the dependency chain of the pixel loop short.
GSASR_AVX2 inline __m256 exp2_avx2(__m256 t) {
  const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, n);
  const __m256 f2 = _mm256_mul_ps(f, f);
  const __m256 p01 = _mm256_fmadd_ps(_mm256_set1_ps(0.6931471824645996f), f, _mm256_set1_ps(1.0f));
  const __m256 p23 = _mm256_fmadd_ps(_mm256_set1_ps(5.550328269600868e-2f), f, _mm256_set1_ps(0.24022647738456726f));
  const __m256 p45 = _mm256_fmadd_ps(_mm256_set1_ps(1.3400082243606448e-3f), f, _mm256_set1_ps(9.618431329727173e-3f));
  const __m256 p46 = _mm256_fmadd_ps(_mm256_set1_ps(1.5361311670858413e-4f), f2, p45);
  const __m256 p03 = _mm256_fmadd_ps(p23, f2, p01);
  const __m256 p = _mm256_fmadd_ps(p46, _mm256_mul_ps(f2, f2), p03);
  const __m256i scale = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), scale));
}

// Span lane masks: entry i is all ones for i < kMaskOnes, then kLanes zeros. A vector with `left` pixels of its
// row's span still to go (any number up to the tile width) reads its mask at kMaskOnes - left: its first
// min(left, 8) lanes are on. The read position then moves by one vector per vector, like every other offset of
// a row's vectors (see VectorJob).
constexpr int32_t kMaskOnes = static_cast<int32_t>(kTileW) + kLanes;
struct SpanMaskTable {
  alignas(64) int32_t bits[kMaskOnes + kLanes];
  constexpr SpanMaskTable() : bits() {
    for (int32_t i = 0; i < kMaskOnes; ++i) bits[i] = -1;
  }
};
constexpr SpanMaskTable kSpanMask{};

// One vector of a splat: 8 consecutive pixels of one row. All four fields are byte offsets, so the pixel loop
// uses them directly in addressing: into the plane-0 accumulator, into the column terms (adx2 / bdx), into
// kSpanMask, and into the row terms (dy / cdy2). The next vector of the same row is the same job plus
// kVectorStep (32 bytes on the first three, the same row).
struct alignas(16) VectorJob {
  int32_t acc, col, mask, row;
};

// The per-row values of one splat, for up to kTileH rows (+ a vector of padding): the row terms, each row's
// first VectorJob, and its number of vectors.
struct RowSpans {
  alignas(32) float dy[kTileH + kLanes];
  alignas(32) float cdy2[kTileH + kLanes];
  alignas(32) VectorJob first_job[kTileH + kLanes];
  alignas(32) int32_t vectors[kTileH + kLanes];
};

// Rows ya..yb of a splat, 8 at a time: the row terms dy, (C dy) dy, and each row's span (row_span, vectorised)
// turned into its first job and vector count. Spans are clamped to [xa, xb] in float before the conversion (a
// whole-box span is +-1e15), so an empty row gets a count <= 0, hence 0 vectors.
GSASR_AVX2 inline void row_spans_avx2(const Splat& s, const TileView& tile, RowSpans* out) {
  const Ellipse& e = s.ellipse;
  const __m256 cy = _mm256_set1_ps(s.cy), c = _mm256_set1_ps(s.c);
  const __m256 centre = _mm256_set1_ps(e.centre), slope = _mm256_set1_ps(e.slope);
  const __m256 half2 = _mm256_set1_ps(e.half2), shrink = _mm256_set1_ps(e.shrink);
  const __m256 margin = _mm256_set1_ps(kSpanMarginPx), origin = _mm256_set1_ps(static_cast<float>(s.box_x0));
  const __m256 lo = _mm256_set1_ps(static_cast<float>(s.xa)), hi = _mm256_set1_ps(static_cast<float>(s.xb));
  const __m256 lo_m1 = _mm256_set1_ps(static_cast<float>(s.xa - 1)), hi_p1 = _mm256_set1_ps(static_cast<float>(s.xb + 1));
  // Byte offsets of a row's first pixel: acc = 4 ((row - ty0) kStride + first - tx0), col = 4 (first - xa),
  // mask = 4 (kMaskOnes - count), row = 4 r.
  const __m256i acc_origin = _mm256_set1_epi32(4 * ((s.ya - tile.ty0) * static_cast<int32_t>(kStride) - tile.tx0));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i xa = _mm256_set1_epi32(s.xa), ones = _mm256_set1_epi32(kMaskOnes);
  const __m256i seven = _mm256_set1_epi32(kLanes - 1), zero = _mm256_setzero_si256();
  const int32_t rows = s.yb - s.ya + 1;
  for (int32_t k = 0; k < rows; k += kLanes) {
    const __m256 dy = _mm256_sub_ps(_mm256_loadu_ps(tile.gy + s.ya + k), cy);
    const __m256 cdy2 = _mm256_mul_ps(_mm256_mul_ps(c, dy), dy);  // the reference's rounding
    const __m256 mid = _mm256_add_ps(centre, _mm256_mul_ps(slope, dy));
    const __m256 half = _mm256_sqrt_ps(
        _mm256_max_ps(_mm256_sub_ps(half2, _mm256_mul_ps(shrink, _mm256_mul_ps(dy, dy))), _mm256_setzero_ps()));
    __m256 f = _mm256_add_ps(_mm256_ceil_ps(_mm256_sub_ps(_mm256_sub_ps(mid, half), margin)), origin);
    __m256 l = _mm256_add_ps(_mm256_floor_ps(_mm256_add_ps(_mm256_add_ps(mid, half), margin)), origin);
    f = _mm256_min_ps(_mm256_max_ps(f, lo), hi_p1);
    l = _mm256_max_ps(_mm256_min_ps(l, hi), lo_m1);
    const __m256i first = _mm256_cvtps_epi32(f);
    const __m256i count = _mm256_max_epi32(_mm256_sub_epi32(_mm256_cvtps_epi32(l), _mm256_sub_epi32(first, _mm256_set1_epi32(1))), zero);
    _mm256_store_ps(out->dy + k, dy);
    _mm256_store_ps(out->cdy2 + k, cdy2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out->vectors + k), _mm256_srli_epi32(_mm256_add_epi32(count, seven), 3));
    const __m256i r = _mm256_add_epi32(_mm256_set1_epi32(k), lane);
    const __m256i acc = _mm256_add_epi32(
        acc_origin, _mm256_slli_epi32(_mm256_add_epi32(_mm256_mullo_epi32(r, _mm256_set1_epi32(kStride)), first), 2));
    const __m256i col = _mm256_slli_epi32(_mm256_sub_epi32(first, xa), 2);
    const __m256i mask = _mm256_slli_epi32(_mm256_sub_epi32(ones, count), 2);
    const __m256i row = _mm256_slli_epi32(r, 2);
    // Transpose the four 8-row vectors into 8 jobs of 4 fields.
    const __m256i ac_lo = _mm256_unpacklo_epi32(acc, col), ac_hi = _mm256_unpackhi_epi32(acc, col);
    const __m256i mr_lo = _mm256_unpacklo_epi32(mask, row), mr_hi = _mm256_unpackhi_epi32(mask, row);
    const __m256i j0 = _mm256_unpacklo_epi64(ac_lo, mr_lo), j1 = _mm256_unpackhi_epi64(ac_lo, mr_lo);
    const __m256i j2 = _mm256_unpacklo_epi64(ac_hi, mr_hi), j3 = _mm256_unpackhi_epi64(ac_hi, mr_hi);
    __m128i* jobs = reinterpret_cast<__m128i*>(out->first_job + k);
    _mm_store_si128(jobs + 0, _mm256_castsi256_si128(j0));
    _mm_store_si128(jobs + 1, _mm256_castsi256_si128(j1));
    _mm_store_si128(jobs + 2, _mm256_castsi256_si128(j2));
    _mm_store_si128(jobs + 3, _mm256_castsi256_si128(j3));
    _mm_store_si128(jobs + 4, _mm256_extracti128_si256(j0, 1));
    _mm_store_si128(jobs + 5, _mm256_extracti128_si256(j1, 1));
    _mm_store_si128(jobs + 6, _mm256_extracti128_si256(j2, 1));
    _mm_store_si128(jobs + 7, _mm256_extracti128_si256(j3, 1));
  }
}

// The vectors of a splat, row after row, in a flat list. Spans are mostly 1..4 vectors long, and looping over
// each row's vectors would mispredict the loop exit on almost every row; one flat loop per splat mispredicts
// once. Every row writes 4 jobs (no branch) and advances by the number it needs.
GSASR_AVX2 inline int32_t vector_jobs(const Splat& s, const RowSpans& spans, VectorJob* jobs) {
  const int32_t rows = s.yb - s.ya + 1;
  const __m128i step = _mm_setr_epi32(4 * kLanes, 4 * kLanes, 4 * kLanes, 0);
  int32_t n = 0;
  for (int32_t r = 0; r < rows; ++r) {
    __m128i job = _mm_load_si128(reinterpret_cast<const __m128i*>(spans.first_job + r));
    const int32_t vectors = spans.vectors[r];
    __m128i* out = reinterpret_cast<__m128i*>(jobs + n);
    for (int j = 0; j < 4; ++j) {
      _mm_store_si128(out + j, job);
      job = _mm_add_epi32(job, step);
    }
    for (int j = 4; j < vectors; ++j) {  // spans over 32 pixels: rare
      _mm_store_si128(out + j, job);
      job = _mm_add_epi32(job, step);
    }
    n += vectors;
  }
  return n;
}

template <typename T>
GSASR_AVX2 inline const T* at_byte(const T* base, int32_t offset) {
  return reinterpret_cast<const T*>(reinterpret_cast<const char*>(base) + offset);
}

// AVX2 version of splat_generic. Whole vectors from each span's first column, lanes past its end masked (the
// accumulator's row padding absorbs a vector that runs past the tile). The quadratic form is computed in the
// reference's order with separate multiplies and adds (no FMA: it cancels when |rho| -> 1). The exponential is
// an approximation, and its argument D q is rounded as (D log2 e) q instead of the reference's D q: both only
// move the weight by ~1e-7 relative (|E| ulp), against the 1e-5 parity budget. The colour sums use FMA (one
// rounding instead of two: the order of the sums differs from the reference's anyway).
GSASR_AVX2 void splat_avx2(const Splat& s, const TileView& tile) {
  RowSpans spans;
  row_spans_avx2(s, tile, &spans);
  VectorJob jobs[kTileH * (kTileW / kLanes) + 4];
  const int32_t n = vector_jobs(s, spans, jobs);
  // The column terms (A dx) dx and B dx of the quadratic form depend on the column only: computed once per
  // splat for columns xa .. xb (+ a vector of padding, read by masked lanes), rounded as the reference does.
  alignas(32) float adx2[kTileW + 2 * kLanes], bdx[kTileW + 2 * kLanes];
  const __m256 vcx = _mm256_set1_ps(s.cx), va = _mm256_set1_ps(s.a), vb = _mm256_set1_ps(s.b);
  for (int32_t k = 0; k <= s.xb - s.xa + kLanes; k += kLanes) {
    const __m256 dx = _mm256_sub_ps(_mm256_loadu_ps(tile.gx + s.xa + k), vcx);
    _mm256_store_ps(adx2 + k, _mm256_mul_ps(_mm256_mul_ps(va, dx), dx));
    _mm256_store_ps(bdx + k, _mm256_mul_ps(vb, dx));
  }
  constexpr float kLog2e = 1.44269504088896341f;
  const __m256 vd = _mm256_set1_ps(s.d * kLog2e);
  const __m256 vr = _mm256_set1_ps(s.red), vg = _mm256_set1_ps(s.green), vbl = _mm256_set1_ps(s.blue);
  const __m256 floor = _mm256_set1_ps(kExpFloor * kLog2e), ceil = _mm256_set1_ps(kExpCeil * kLog2e);
  const float* mask = reinterpret_cast<const float*>(kSpanMask.bits);
  float* const ar = tile.acc[0];
  const std::ptrdiff_t green = tile.acc[1] - ar, blue = tile.acc[2] - ar;
  for (int32_t v = 0; v < n; ++v) {
    const VectorJob job = jobs[v];
    const __m256 vdy = _mm256_broadcast_ss(at_byte(spans.dy, job.row));
    const __m256 vcdy2 = _mm256_broadcast_ss(at_byte(spans.cdy2, job.row));
    const __m256 bdxdy = _mm256_mul_ps(_mm256_loadu_ps(at_byte(bdx, job.col)), vdy);
    __m256 t = _mm256_mul_ps(_mm256_add_ps(_mm256_sub_ps(_mm256_loadu_ps(at_byte(adx2, job.col)), bdxdy), vcdy2), vd);
    t = _mm256_min_ps(_mm256_max_ps(t, floor), ceil);
    const __m256 w = _mm256_and_ps(exp2_avx2(t), _mm256_loadu_ps(at_byte(mask, job.mask)));
    float* px = reinterpret_cast<float*>(reinterpret_cast<char*>(ar) + job.acc);
    _mm256_storeu_ps(px, _mm256_fmadd_ps(w, vr, _mm256_loadu_ps(px)));
    _mm256_storeu_ps(px + green, _mm256_fmadd_ps(w, vg, _mm256_loadu_ps(px + green)));
    _mm256_storeu_ps(px + blue, _mm256_fmadd_ps(w, vbl, _mm256_loadu_ps(px + blue)));
  }
}

bool cpu_has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

using SplatFn = void (*)(const Splat&, const TileView&);

SplatFn pick_splat() {
#ifdef GSASR_HAVE_AVX2_PATH
  if (cpu_has_avx2()) return splat_avx2;
#endif
  return splat_generic;
}

// Everything the tile kernel reads, for one render.
struct TileJob {
  Terms terms;
  const int32_t* boxes;     // [N, 4] region-local inclusive (x0, x1, y0, y1); empty when x0 > x1
  const Ellipse* ellipses;  // [N], or nullptr for whole boxes
  const int64_t* cols;      // [tiles_x, 2] grid column range per tile column
  const int64_t* rows;      // [tiles_y, 2] grid row range per tile row
  int64_t grid_w;
  Region region;
};

// Accumulate tile t (index into the row-major tile grid) and write its pixels into image [3, h, w].
void render_tile(const TileJob& job, SplatFn splat, const float* gx, const float* gy, int64_t t, float* acc,
                 float* image) {
  const int64_t h = job.region.h, w = job.region.w, tiles_x = (w + kTileW - 1) / kTileW;
  const int64_t ty = t / tiles_x, tx = t % tiles_x;
  TileView tile{gx, gy, static_cast<int32_t>(tx * kTileW), static_cast<int32_t>(ty * kTileH),
                {acc, acc + kTileH * kStride, acc + 2 * kTileH * kStride}};
  const int32_t tx1 = static_cast<int32_t>(std::min<int64_t>(tile.tx0 + kTileW, w)) - 1;
  const int32_t ty1 = static_cast<int32_t>(std::min<int64_t>(tile.ty0 + kTileH, h)) - 1;
  std::fill(acc, acc + 3 * kTileH * kStride, 0.0f);
  const Terms& tm = job.terms;
  for (int64_t r = job.rows[2 * ty]; r <= job.rows[2 * ty + 1]; ++r) {
    for (int64_t c = job.cols[2 * tx]; c <= job.cols[2 * tx + 1]; ++c) {
      const int64_t i = r * job.grid_w + c;
      const int32_t* box = job.boxes + 4 * i;
      Splat s;
      s.xa = std::max(box[0], tile.tx0);
      s.xb = std::min(box[1], tx1);
      s.ya = std::max(box[2], tile.ty0);
      s.yb = std::min(box[3], ty1);
      if (s.xa > s.xb || s.ya > s.yb) continue;
      const float* centre = tm.centre + i * tm.centre_stride;
      const float* conic = tm.conic + i * tm.conic_stride;
      const float* colour = tm.colour + i * tm.colour_stride;
      s.cx = centre[0];
      s.cy = centre[1];
      s.a = conic[0];
      s.b = conic[1];
      s.c = conic[2];
      s.d = conic[3];
      s.red = colour[0];
      s.green = colour[1];
      s.blue = colour[2];
      s.ellipse = job.ellipses != nullptr ? job.ellipses[i] : kWholeBox;
      s.box_x0 = box[0];
      splat(s, tile);
    }
  }
  for (int k = 0; k < 3; ++k) {
    for (int32_t y = tile.ty0; y <= ty1; ++y) {
      const float* row = tile.acc[k] + (y - tile.ty0) * kStride;
      std::copy(row, row + (tx1 - tile.tx0 + 1), image + (k * h + y) * w + tile.tx0);
    }
  }
}

// Render all tiles into image [3, h, w] (fully overwritten).
void render_tiles(const TileJob& job, float* image) {
  const Region& rg = job.region;
  const int64_t tiles_x = (rg.w + kTileW - 1) / kTileW, tiles_y = (rg.h + kTileH - 1) / kTileH;
  // Pixel coordinates of the region, computed once (the kernel's double expression rounded to float); padded
  // to whole tiles plus a vector, read by vectors that run past the region (their sums are never copied out).
  std::vector<float> gx(tiles_x * kTileW + kLanes), gy(tiles_y * kTileH + kLanes);
  for (int64_t j = 0; j < rg.w; ++j) gx[j] = pixel_coord(rg.x0 + j, rg.canvas_w);
  std::fill(gx.begin() + rg.w, gx.end(), gx[rg.w - 1]);
  for (int64_t i = 0; i < rg.h; ++i) gy[i] = pixel_coord(rg.y0 + i, rg.canvas_h);
  std::fill(gy.begin() + rg.h, gy.end(), gy[rg.h - 1]);
  const SplatFn splat = pick_splat();
  const int64_t tiles = tiles_x * tiles_y;
  std::atomic<int64_t> next{0};
  // One task per thread, each taking tiles from a shared counter: tiles differ in cost (edges, density), and
  // static halves would leave one core idle at the end.
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    alignas(64) float acc[3 * kTileH * kStride];
    for (int64_t worker = begin; worker < end; ++worker) {
      for (int64_t t = next.fetch_add(1); t < tiles; t = next.fetch_add(1)) {
        render_tile(job, splat, gx.data(), gy.data(), t, acc, image);
      }
    }
  });
}

// Region-local first and last pixel passing the window test on one axis: gsasr_math.h's axis_span, with the
// pixel coordinates of the region (coords[j] = pixel_coord(start + j, n)) read from a table instead of being
// recomputed with a double division per test. Same estimate, same float32 test, so the same interval.
bool axis_span_table(float centre, float radius, int64_t n, int64_t length, const float* coords, int32_t* first,
                     int32_t* last, double start) {
  const double c = centre, r = radius;
  double lo_est = c - r, hi_est = c + r;
  if (n > 1) {
    const double half = (n - 1) / 2.0;
    lo_est = (c - r + 1.0) * half - start;
    hi_est = (c + r + 1.0) * half - start;
  } else {
    lo_est -= start;
    hi_est -= start;
  }
  const double end = static_cast<double>(length - 1);
  double lo_d = std::floor(lo_est) - 1.0, hi_d = std::ceil(hi_est) + 1.0;
  lo_d = lo_d < 0.0 ? 0.0 : (lo_d > end ? end : lo_d);
  hi_d = hi_d < 0.0 ? 0.0 : (hi_d > end ? end : hi_d);
  int32_t lo = static_cast<int32_t>(lo_d), hi = static_cast<int32_t>(hi_d);
  const auto inside = [&](int32_t j) {
    const float d = coords[j] - centre;
    return !(d > radius || d < -radius);
  };
  while (lo <= hi && !inside(lo)) ++lo;
  while (hi >= lo && !inside(hi)) --hi;
  *first = lo;
  *last = hi;
  return lo <= hi;
}

// The region's pixel coordinates on both axes, for axis_span_table.
struct RegionCoords {
  std::vector<float> x, y;
  explicit RegionCoords(const Region& rg) : x(rg.w), y(rg.h) {
    for (int64_t j = 0; j < rg.w; ++j) x[j] = pixel_coord(rg.x0 + j, rg.canvas_w);
    for (int64_t i = 0; i < rg.h; ++i) y[i] = pixel_coord(rg.y0 + i, rg.canvas_h);
  }
};

// Region-local inclusive box of one Gaussian (the official float32 window test per axis); empty is (1, 0, 1, 0).
void box_of_table(const float* centre, float rx, float ry, const Region& rg, const RegionCoords& coords,
                  int32_t* box) {
  const bool hit =
      axis_span_table(centre[0], rx, rg.canvas_w, rg.w, coords.x.data(), &box[0], &box[1], static_cast<double>(rg.x0)) &&
      axis_span_table(centre[1], ry, rg.canvas_h, rg.h, coords.y.data(), &box[2], &box[3], static_cast<double>(rg.y0));
  if (!hit) {
    box[0] = box[2] = 1;
    box[1] = box[3] = 0;
  }
}

// Region-local inclusive box of one Gaussian (the official float32 window test per axis); empty is (1, 0, 1, 0).
void box_of(const float* centre, float rx, float ry, const Region& rg, int32_t* box) {
  int32_t xa, xb, ya, yb;
  const bool hit = axis_span(centre[0], rx, rg.canvas_w, rg.x0, rg.w, &xa, &xb) &&
                   axis_span(centre[1], ry, rg.canvas_h, rg.y0, rg.h, &ya, &yb);
  if (hit) {
    box[0] = xa - static_cast<int32_t>(rg.x0);
    box[1] = xb - static_cast<int32_t>(rg.x0);
    box[2] = ya - static_cast<int32_t>(rg.y0);
    box[3] = yb - static_cast<int32_t>(rg.y0);
  } else {
    box[0] = box[2] = 1;
    box[1] = box[3] = 0;
  }
}

// Per tile of an axis of `length` pixels: the first and last grid line whose pixel union [lo[l], hi[l]] meets
// it ((1, 0) when none). lo > hi marks an empty line.
void tile_ranges(const std::vector<int32_t>& lo, const std::vector<int32_t>& hi, int64_t length, int64_t tile,
                 int64_t* out) {
  const int64_t tiles = (length + tile - 1) / tile, lines = static_cast<int64_t>(lo.size());
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t start = t * tile, end = std::min(start + tile, length) - 1;
    int64_t first = 1, last = 0;
    for (int64_t l = 0; l < lines; ++l) {
      if (lo[l] <= hi[l] && lo[l] <= end && hi[l] >= start) {
        if (first > last) first = l;
        last = l;
      }
    }
    out[2 * t] = first;
    out[2 * t + 1] = last;
  }
}

}  // namespace

at::Tensor boxes_cpu(const at::Tensor& params, int64_t canvas_h, int64_t canvas_w, int64_t y0, int64_t x0,
                     int64_t h, int64_t w) {
  const int64_t n = params.size(0);
  auto boxes = at::empty({n, 4}, params.options().dtype(at::kInt));
  const float* p = params.data_ptr<float>();
  int32_t* out = boxes.data_ptr<int32_t>();
  const Region rg{canvas_h, canvas_w, y0, x0, h, w};
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* g = p + i * kParams;
      box_of(g + kCx, g[kRx], g[kRy], rg, out + i * 4);
    }
  });
  return boxes;
}

at::Tensor render_cpu(const at::Tensor& params, const at::Tensor& boxes, const at::Tensor& col_range,
                      const at::Tensor& row_range, int64_t grid_w, int64_t tile, int64_t canvas_h, int64_t canvas_w,
                      int64_t y0, int64_t x0, int64_t h, int64_t w) {
  TORCH_CHECK(tile == kTile, "gsasr native cpu: tile must be ", kTile, ", got ", tile);
  auto image = at::empty({3, h, w}, params.options());
  const float* p = params.data_ptr<float>();
  // The caller's column ranges are per kTile columns; ours are kTileW = 2 kTile wide: merge them in pairs.
  static_assert(kTileW == 2 * kTile && kTileH == kTile, "render_cpu merges square-tile ranges in pairs");
  const int64_t* given = col_range.data_ptr<int64_t>();
  const int64_t narrow = col_range.size(0);
  std::vector<int64_t> cols(2 * ((narrow + 1) / 2));
  for (int64_t t = 0; t < narrow; t += 2) {
    int64_t first = given[2 * t], last = given[2 * t + 1];
    if (t + 1 < narrow && given[2 * t + 2] <= given[2 * t + 3]) {
      first = first <= last ? std::min(first, given[2 * t + 2]) : given[2 * t + 2];
      last = std::max(last, given[2 * t + 3]);
    }
    cols[t] = first;
    cols[t + 1] = last;
  }
  const TileJob job{Terms{p + kCx, kParams, p + kA, kParams, p + kR, kParams},
                    boxes.data_ptr<int32_t>(),
                    nullptr,
                    cols.data(),
                    row_range.data_ptr<int64_t>(),
                    grid_w,
                    Region{canvas_h, canvas_w, y0, x0, h, w}};
  render_tiles(job, image.data_ptr<float>());
  return image;
}

at::Tensor render_terms_cpu(const at::Tensor& centre, const at::Tensor& sigma, const at::Tensor& conic,
                            const at::Tensor& colour, double dmax, double cutoff, int64_t grid_w, int64_t canvas_h,
                            int64_t canvas_w, int64_t y0, int64_t x0, int64_t h, int64_t w) {
  const int64_t n = centre.size(0), grid_h = n / grid_w;
  const Region rg{canvas_h, canvas_w, y0, x0, h, w};
  const float* cen = centre.data_ptr<float>();
  const float* sig = sigma.data_ptr<float>();
  const float* con = conic.data_ptr<float>();
  const float* rgb = colour.data_ptr<float>();
  // The support radius exactly as reference.support_radius rounds it: min(float32(sigma * k), float32(dmax)).
  const float dmax32 = static_cast<float>(dmax), cutoff32 = static_cast<float>(cutoff);

  const RegionCoords coords(rg);
  // Every box is written by the pass below, and an ellipse is read only where its box is not empty: left
  // uninitialised (zero-filling 32 bytes per Gaussian cost as much as a tenth of the pass).
  const std::unique_ptr<int32_t[]> boxes(new int32_t[4 * n]);
  const std::unique_ptr<Ellipse[]> ellipses(new Ellipse[n]);
  // Unions of the boxes per grid row (computed by the row's owner) and per grid column (per thread, merged).
  std::vector<int32_t> row_lo(grid_h), row_hi(grid_h);
  const int threads = at::get_num_threads();
  std::vector<int32_t> col_lo(threads * grid_w, std::numeric_limits<int32_t>::max());
  std::vector<int32_t> col_hi(threads * grid_w, -1);
  at::parallel_for(0, grid_h, std::max<int64_t>(1, 4096 / grid_w), [&](int64_t begin, int64_t end) {
    const int thread = at::get_thread_num();
    int32_t* clo = col_lo.data() + thread * grid_w;
    int32_t* chi = col_hi.data() + thread * grid_w;
    for (int64_t r = begin; r < end; ++r) {
      int32_t rlo = std::numeric_limits<int32_t>::max(), rhi = -1;
      for (int64_t c = 0; c < grid_w; ++c) {
        const int64_t i = r * grid_w + c;
        int32_t* box = boxes.get() + 4 * i;
        const float* s = sig + 2 * i;
        const float* centre = cen + 2 * i;
        const float radius_x = std::min(s[0] * cutoff32, dmax32), radius_y = std::min(s[1] * cutoff32, dmax32);
        const double k2 = visible_cutoff2(rgb + 3 * i, cutoff32);
        if (k2 <= 0.0) {  // too dark to show anywhere: every contribution is below exp(-k^2/2)
          box[0] = box[2] = 1;
          box[1] = box[3] = 0;
          continue;
        }
        EllipseShape shape;
        if (!ellipse_shape(con + 4 * i, cutoff32, k2, rg, &shape)) {
          box_of_table(centre, radius_x, radius_y, rg, coords, box);
          ellipses[i] = kWholeBox;
        } else {
          // Per axis, the exact window span, unless the ellipse provably lies inside the window on that axis
          // (the usual case once colour shrinks the ellipse below the k-sigma box): then the region's whole
          // extent, which fit_ellipse cuts to the ellipse.
          bool hit = true;
          if (window_holds_ellipse(centre[0], shape.extent_x, radius_x, rg.canvas_w)) {
            box[0] = 0;
            box[1] = static_cast<int32_t>(rg.w) - 1;
          } else {
            hit = axis_span_table(centre[0], radius_x, rg.canvas_w, rg.w, coords.x.data(), &box[0], &box[1],
                                  static_cast<double>(rg.x0));
          }
          if (hit && window_holds_ellipse(centre[1], shape.extent_y, radius_y, rg.canvas_h)) {
            box[2] = 0;
            box[3] = static_cast<int32_t>(rg.h) - 1;
          } else if (hit) {
            hit = axis_span_table(centre[1], radius_y, rg.canvas_h, rg.h, coords.y.data(), &box[2], &box[3],
                                  static_cast<double>(rg.y0));
          }
          if (hit) {
            ellipses[i] = fit_ellipse(shape, centre, rg, box);
          } else {
            box[0] = box[2] = 1;
            box[1] = box[3] = 0;
          }
        }
        if (box[0] > box[1] || box[2] > box[3]) {  // the ellipse misses the region
          box[0] = box[2] = 1;
          box[1] = box[3] = 0;
          continue;
        }
        rlo = std::min(rlo, box[2]);
        rhi = std::max(rhi, box[3]);
        clo[c] = std::min(clo[c], box[0]);
        chi[c] = std::max(chi[c], box[1]);
      }
      row_lo[r] = rlo;
      row_hi[r] = rhi;
    }
  });
  for (int t = 1; t < threads; ++t) {
    for (int64_t c = 0; c < grid_w; ++c) {
      col_lo[c] = std::min(col_lo[c], col_lo[t * grid_w + c]);
      col_hi[c] = std::max(col_hi[c], col_hi[t * grid_w + c]);
    }
  }
  col_lo.resize(grid_w);
  col_hi.resize(grid_w);
  std::vector<int64_t> cols(2 * ((w + kTileW - 1) / kTileW)), rows(2 * ((h + kTileH - 1) / kTileH));
  tile_ranges(col_lo, col_hi, w, kTileW, cols.data());
  tile_ranges(row_lo, row_hi, h, kTileH, rows.data());

  auto image = at::empty({3, h, w}, centre.options());
  const TileJob job{Terms{cen, 2, con, 4, rgb, 3}, boxes.get(), ellipses.get(), cols.data(),
                    rows.data(), grid_w, rg};
  render_tiles(job, image.data_ptr<float>());
  return image;
}

}  // namespace gsasr
