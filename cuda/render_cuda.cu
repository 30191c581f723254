// CUDA kernels of the native rasteriser: the same two steps as render_cpu.cpp, on the current stream.
//
// Gather: one block per 16 x 16 output tile, one thread per pixel; each thread accumulates its pixel in
// registers and writes it once. No atomics, no sorting; the arithmetic is the CPU kernel's (gsasr_math.h),
// compiled with -fmad=false like the CPU's -ffp-contract=off. Two ways to visit the tile's candidates, the
// rectangle of the Gaussian grid chosen in gsasr/render/_native.py from the actual pixel boxes:
// * scan (render_kernel): every thread walks the whole rectangle and tests each box itself (warp-uniform
//   broadcast loads). Simplest; costs one box test per thread per candidate.
// * compact (render_compact_kernel): the block tests 256 candidates at a time against the tile, one per thread,
//   and packs the hits, in candidate order, into shared memory; threads then walk only the hits. Same hits in the
//   same order, so the same sums bit for bit; fewer and cheaper iterations where boxes are much smaller than the
//   rectangle (GSASR_CUDA_GATHER picks, see _native.py; bench/bench_render.py times both).
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

constexpr int kBlockThreads = kTileCuda * kTileCuda;
constexpr int kWarps = kBlockThreads / 32;
constexpr int kStaged = 9;  // what the pixel loop reads of a Gaussian: centre, conic, colour

__global__ void __launch_bounds__(kBlockThreads)
render_compact_kernel(const float* __restrict__ params, const int32_t* __restrict__ boxes,
                      const int64_t* __restrict__ cols, const int64_t* __restrict__ rows, int64_t grid_w,
                      int64_t canvas_h, int64_t canvas_w, int64_t y0, int64_t x0, int64_t h, int64_t w,
                      float* __restrict__ image) {
  __shared__ float staged[kBlockThreads * kStaged];
  __shared__ int4 staged_box[kBlockThreads];
  __shared__ int warp_start[kWarps + 1];  // hits before each warp's, then the batch's total
  const int64_t tx = blockIdx.x, ty = blockIdx.y;
  const int thread = threadIdx.y * kTileCuda + threadIdx.x;
  const int lane = thread % 32, warp = thread / 32;
  const int32_t x = static_cast<int32_t>(tx * kTileCuda + threadIdx.x);
  const int32_t y = static_cast<int32_t>(ty * kTileCuda + threadIdx.y);
  const bool mine = x < w && y < h;
  // The tile's pixels (region coordinates, like the boxes), clipped to the region.
  const int32_t tile_x0 = static_cast<int32_t>(tx * kTileCuda), tile_y0 = static_cast<int32_t>(ty * kTileCuda);
  const int32_t tile_x1 = static_cast<int32_t>((tx + 1) * kTileCuda < w ? (tx + 1) * kTileCuda - 1 : w - 1);
  const int32_t tile_y1 = static_cast<int32_t>((ty + 1) * kTileCuda < h ? (ty + 1) * kTileCuda - 1 : h - 1);
  const float px = pixel_coord(x0 + x, canvas_w), py = pixel_coord(y0 + y, canvas_h);
  const int64_t row0 = rows[2 * ty], col0 = cols[2 * tx];
  const int64_t width = cols[2 * tx + 1] - col0 + 1, height = rows[2 * ty + 1] - row0 + 1;
  const int64_t candidates = (width > 0 && height > 0) ? width * height : 0;  // block-uniform
  float red = 0.0f, green = 0.0f, blue = 0.0f;
  for (int64_t first = 0; first < candidates; first += kBlockThreads) {
    // 1. Each thread tests one candidate (row-major over the rectangle, the scan kernel's order) against the tile.
    const int64_t k = first + thread;
    int64_t i = 0;
    int4 box = make_int4(1, 0, 1, 0);
    if (k < candidates) {
      i = (row0 + k / width) * grid_w + col0 + k % width;
      box = make_int4(boxes[4 * i], boxes[4 * i + 1], boxes[4 * i + 2], boxes[4 * i + 3]);
    }
    // An empty box (x0 > x1: no pixel of the region) is never a hit.
    const bool hit = box.x <= box.y && box.z <= box.w && box.x <= tile_x1 && box.y >= tile_x0 &&
                     box.z <= tile_y1 && box.w >= tile_y0;
    // 2. Slots in candidate order: hits of earlier warps, then of earlier lanes of this warp.
    const unsigned ballot = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) warp_start[warp] = __popc(ballot);
    __syncthreads();
    if (thread == 0) {
      int total = 0;
      for (int v = 0; v < kWarps; ++v) {
        const int count = warp_start[v];
        warp_start[v] = total;
        total += count;
      }
      warp_start[kWarps] = total;
    }
    __syncthreads();
    if (hit) {
      const int slot = warp_start[warp] + __popc(ballot & ((1u << lane) - 1u));
      const float* g = params + i * kParams;
      float* s = staged + slot * kStaged;
      s[0] = g[kCx];
      s[1] = g[kCy];
      s[2] = g[kA];
      s[3] = g[kB];
      s[4] = g[kC];
      s[5] = g[kD];
      s[6] = g[kR];
      s[7] = g[kG];
      s[8] = g[kBlue];
      staged_box[slot] = box;
    }
    __syncthreads();
    // 3. Every thread walks the hits for its pixel (the scan kernel's test and arithmetic).
    const int hits = warp_start[kWarps];
    if (mine) {
      for (int j = 0; j < hits; ++j) {
        const int4 b = staged_box[j];
        if (x < b.x || x > b.y || y < b.z || y > b.w) continue;
        const float* s = staged + j * kStaged;
        const float dy = py - s[1];
        const float v = weight(px - s[0], dy, (s[4] * dy) * dy, s[2], s[3], s[5]);
        red += v * s[6];
        green += v * s[7];
        blue += v * s[8];
      }
    }
    __syncthreads();  // the next batch overwrites the shared arrays
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
                          int64_t canvas_w, int64_t y0, int64_t x0, int64_t h, int64_t w, bool compact) {
  TORCH_CHECK(tile == kTileCuda, "gsasr native cuda: tile must be ", kTileCuda, ", got ", tile);
  const c10::cuda::CUDAGuard guard(params.device());
  auto image = at::empty({3, h, w}, params.options());
  const dim3 blocks(static_cast<unsigned int>((w + kTileCuda - 1) / kTileCuda),
                    static_cast<unsigned int>((h + kTileCuda - 1) / kTileCuda));
  TORCH_CHECK(blocks.y <= 65535, "gsasr native cuda: region too tall (", h, " rows); render it in strips");
  const dim3 threads(kTileCuda, kTileCuda);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  auto* kernel = compact ? render_compact_kernel : render_kernel;
  kernel<<<blocks, threads, 0, stream>>>(params.data_ptr<float>(), boxes.data_ptr<int32_t>(),
                                        col_range.data_ptr<int64_t>(), row_range.data_ptr<int64_t>(), grid_w,
                                        canvas_h, canvas_w, y0, x0, h, w, image.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return image;
}

}  // namespace gsasr
