// CPU kernels of the native rasteriser: per-Gaussian pixel boxes, and the gather over output tiles.
//
// Gather: each output tile (kTile x kTile pixels) walks the Gaussians that can reach it, accumulates their
// weighted colours in a small local buffer (L1-resident), and writes its pixels once. Tiles run in parallel with
// at::parallel_for and never share a pixel, so there are no atomics and the summation order is fixed. The
// Gaussians a tile walks are a rectangle of the Gaussian grid (row-major, grid_w per row), chosen in
// gsasr/render/_native.py from the actual pixel boxes, so no Gaussian that reaches the tile is ever missed.
#include <ATen/Parallel.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#define GSASR_HAVE_MXCSR 1
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

constexpr int64_t kTile = 32;
constexpr int32_t kLanes = 8;  // pixels per vector step (AVX2 floats); a power of two
}

at::Tensor boxes_cpu(const at::Tensor& params, int64_t canvas_h, int64_t canvas_w, int64_t y0, int64_t x0,
                        int64_t h, int64_t w) {
  const int64_t n = params.size(0);
  auto boxes = at::empty({n, 4}, params.options().dtype(at::kInt));
  const float* p = params.data_ptr<float>();
  int32_t* out = boxes.data_ptr<int32_t>();
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* g = p + i * kParams;
      int32_t* box = out + i * 4;
      int32_t xa, xb, ya, yb;
      const bool hit = axis_span(g[kCx], g[kRx], canvas_w, x0, w, &xa, &xb) &&
                       axis_span(g[kCy], g[kRy], canvas_h, y0, h, &ya, &yb);
      if (hit) {  // region-local, inclusive
        box[0] = xa - static_cast<int32_t>(x0);
        box[1] = xb - static_cast<int32_t>(x0);
        box[2] = ya - static_cast<int32_t>(y0);
        box[3] = yb - static_cast<int32_t>(y0);
      } else {  // empty: first > last on both axes
        box[0] = box[2] = 1;
        box[1] = box[3] = 0;
      }
    }
  });
  return boxes;
}

at::Tensor render_cpu(const at::Tensor& params, const at::Tensor& boxes, const at::Tensor& col_range,
                         const at::Tensor& row_range, int64_t grid_w, int64_t tile, int64_t canvas_h,
                         int64_t canvas_w, int64_t y0, int64_t x0, int64_t h, int64_t w) {
  TORCH_CHECK(tile == kTile, "gsasr native cpu: tile must be ", kTile, ", got ", tile);
  auto image = at::zeros({3, h, w}, params.options());
  const int64_t tiles_x = (w + kTile - 1) / kTile, tiles_y = (h + kTile - 1) / kTile;
  // Pixel coordinates of the region, computed once (the kernel's double expression rounded to float).
  std::vector<float> gx(w + kLanes), gy(h);
  for (int64_t j = 0; j < w; ++j) gx[j] = pixel_coord(x0 + j, canvas_w);
  std::fill(gx.begin() + w, gx.end(), gx[w - 1]);  // padding read by the whole-vector rows (weight 0 there)
  for (int64_t i = 0; i < h; ++i) gy[i] = pixel_coord(y0 + i, canvas_h);

  const float* p = params.data_ptr<float>();
  const int32_t* bx = boxes.data_ptr<int32_t>();
  const int64_t* cols = col_range.data_ptr<int64_t>();
  const int64_t* rows = row_range.data_ptr<int64_t>();
  float* img = image.data_ptr<float>();

  at::parallel_for(0, tiles_x * tiles_y, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals flush;
    alignas(64) float acc[3][kTile * kTile + kLanes];  // + padding written (with 0) by whole-vector rows
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ty = t / tiles_x, tx = t % tiles_x;
      const int32_t ty0 = static_cast<int32_t>(ty * kTile), tx0 = static_cast<int32_t>(tx * kTile);
      const int32_t ty1 = static_cast<int32_t>(std::min<int64_t>(ty0 + kTile, h)) - 1;
      const int32_t tx1 = static_cast<int32_t>(std::min<int64_t>(tx0 + kTile, w)) - 1;
      std::fill(&acc[0][0], &acc[0][0] + 3 * (kTile * kTile + kLanes), 0.0f);
      for (int64_t r = rows[2 * ty]; r <= rows[2 * ty + 1]; ++r) {
        for (int64_t c = cols[2 * tx]; c <= cols[2 * tx + 1]; ++c) {
          const int64_t i = r * grid_w + c;
          const int32_t* box = bx + 4 * i;
          const int32_t xa = std::max(box[0], tx0), xb = std::min(box[1], tx1);
          const int32_t ya = std::max(box[2], ty0), yb = std::min(box[3], ty1);
          if (xa > xb || ya > yb) continue;
          const float* g = p + i * kParams;
          const float cx = g[kCx], cy = g[kCy], a = g[kA], b = g[kB], cc = g[kC], d = g[kD];
          const float red = g[kR], green = g[kG], blue = g[kBlue];
          // Whole vectors per row: the span is rounded up to kLanes pixels and the extra ones get weight 0
          // (they fail the window test), so no scalar remainder loop runs. gx and acc are padded for it.
          const int32_t len = xb - xa, count = (len + kLanes) & ~(kLanes - 1);
          const float* __restrict__ xs = gx.data() + xa;
          for (int32_t y = ya; y <= yb; ++y) {
            const float dy = gy[y] - cy;
            const float cdy2 = (cc * dy) * dy;
            const int64_t at = static_cast<int64_t>(y - ty0) * kTile + (xa - tx0);
            float* __restrict__ ar = acc[0] + at;
            float* __restrict__ ag = acc[1] + at;
            float* __restrict__ ab = acc[2] + at;
            // The hot loop: straight-line float arithmetic, vectorised by the compiler.
            for (int32_t k = 0; k < count; ++k) {
              const float v = weight(xs[k] - cx, dy, cdy2, a, b, d) * (k <= len ? 1.0f : 0.0f);
              ar[k] += v * red;
              ag[k] += v * green;
              ab[k] += v * blue;
            }
          }
        }
      }
      for (int k = 0; k < 3; ++k) {
        for (int32_t y = ty0; y <= ty1; ++y) {
          std::copy(acc[k] + (y - ty0) * kTile, acc[k] + (y - ty0) * kTile + (tx1 - tx0 + 1),
                    img + (k * h + y) * w + tx0);
        }
      }
    }
  });
  return image;
}

}  // namespace gsasr
