// CUDA kernels of the native rasteriser: the same two steps as render_cpu.cpp, on the current stream.
//
// Gather: one block per 16 x 16 output tile, one thread per pixel. Every thread of a block walks the same
// rectangle of the Gaussian grid (chosen in gsasr/render/_native.py from the actual pixel boxes), so the
// parameter loads are warp-uniform broadcasts; each thread accumulates its pixel in registers and writes it
// once. No atomics, no shared-memory staging, no sorting: kept simple so that it is obviously the CPU
// kernel's arithmetic (gsasr_math.h), compiled with -fmad=false like the CPU's -ffp-contract=off.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ATen.h>

#include "gsasr_math.h"

namespace gsasr {

namespace {
constexpr int kTileCuda = 16;

__global__ void boxes_kernel(const float* __restrict__ params, int64_t n, int64_t canvas_h, int64_t canvas_w,
                             int64_t y0, int64_t x0, int64_t h, int64_t w, int32_t* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float* g = params + i * kParams;
  int32_t xa, xb, ya, yb;
  const bool hit = axis_span(g[kCx], g[kRx], canvas_w, x0, w, &xa, &xb) &&
                   axis_span(g[kCy], g[kRy], canvas_h, y0, h, &ya, &yb);
  int32_t* box = out + i * 4;
  if (hit) {
    box[0] = xa - static_cast<int32_t>(x0);
    box[1] = xb - static_cast<int32_t>(x0);
    box[2] = ya - static_cast<int32_t>(y0);
    box[3] = yb - static_cast<int32_t>(y0);
  } else {
    box[0] = box[2] = 1;
    box[1] = box[3] = 0;
  }
}

__global__ void render_kernel(const float* __restrict__ params, const int32_t* __restrict__ boxes,
                              const int64_t* __restrict__ cols, const int64_t* __restrict__ rows, int64_t grid_w,
                              int64_t canvas_h, int64_t canvas_w, int64_t y0, int64_t x0, int64_t h, int64_t w,
                              float* __restrict__ image) {
  const int64_t tx = blockIdx.x, ty = blockIdx.y;
  const int32_t x = static_cast<int32_t>(tx * kTileCuda + threadIdx.x);
  const int32_t y = static_cast<int32_t>(ty * kTileCuda + threadIdx.y);
  // Threads past the region's edge still walk the loop (they test no pixel) so the block stays in step.
  const bool mine = x < w && y < h;
  const float px = pixel_coord(x0 + x, canvas_w), py = pixel_coord(y0 + y, canvas_h);
  float red = 0.0f, green = 0.0f, blue = 0.0f;
  for (int64_t r = rows[2 * ty]; r <= rows[2 * ty + 1]; ++r) {
    for (int64_t c = cols[2 * tx]; c <= cols[2 * tx + 1]; ++c) {
      const int64_t i = r * grid_w + c;
      const int32_t* box = boxes + 4 * i;
      if (!mine || x < box[0] || x > box[1] || y < box[2] || y > box[3]) continue;
      const float* g = params + i * kParams;
      const float dy = py - g[kCy];
      const float v = weight(px - g[kCx], dy, (g[kC] * dy) * dy, g[kA], g[kB], g[kD]);
      red += v * g[kR];
      green += v * g[kG];
      blue += v * g[kBlue];
    }
  }
  if (mine) {
    const int64_t plane = h * w, at = static_cast<int64_t>(y) * w + x;
    image[at] = red;
    image[plane + at] = green;
    image[2 * plane + at] = blue;
  }
}
}  // namespace

at::Tensor boxes_cuda(const at::Tensor& params, int64_t canvas_h, int64_t canvas_w, int64_t y0, int64_t x0,
                         int64_t h, int64_t w) {
  const c10::cuda::CUDAGuard guard(params.device());
  const int64_t n = params.size(0);
  auto boxes = at::empty({n, 4}, params.options().dtype(at::kInt));
  if (n == 0) return boxes;
  const int threads = 256;
  const auto blocks = static_cast<unsigned int>((n + threads - 1) / threads);
  boxes_kernel<<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      params.data_ptr<float>(), n, canvas_h, canvas_w, y0, x0, h, w, boxes.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return boxes;
}

at::Tensor render_cuda(const at::Tensor& params, const at::Tensor& boxes, const at::Tensor& col_range,
                          const at::Tensor& row_range, int64_t grid_w, int64_t tile, int64_t canvas_h,
                          int64_t canvas_w, int64_t y0, int64_t x0, int64_t h, int64_t w) {
  TORCH_CHECK(tile == kTileCuda, "gsasr native cuda: tile must be ", kTileCuda, ", got ", tile);
  const c10::cuda::CUDAGuard guard(params.device());
  auto image = at::empty({3, h, w}, params.options());
  const dim3 blocks(static_cast<unsigned int>((w + kTileCuda - 1) / kTileCuda),
                    static_cast<unsigned int>((h + kTileCuda - 1) / kTileCuda));
  TORCH_CHECK(blocks.y <= 65535, "gsasr native cuda: region too tall (", h, " rows); render it in strips");
  const dim3 threads(kTileCuda, kTileCuda);
  render_kernel<<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      params.data_ptr<float>(), boxes.data_ptr<int32_t>(), col_range.data_ptr<int64_t>(),
      row_range.data_ptr<int64_t>(), grid_w, canvas_h, canvas_w, y0, x0, h, w, image.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return image;
}

}  // namespace gsasr
