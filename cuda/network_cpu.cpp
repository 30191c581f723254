// CPU kernels for the networks' bf16 path (gsasr/archs/low_precision.py): the per-token glue between the matrix
// products, fused into one pass each.
//
// In the decoder's attention layers (and the transformer encoders) the residual stream stays float32 while the
// products run in bf16, exactly as under the official bf16 autocast. In PyTorch every step between two products
// is a separate pass over the chunk: widen the bf16 branch, add it to the stream, LayerNorm (float32 out), round to
// bf16 for the next product; RoPE widens q and k, rotates them as complex numbers and rounds them back. On a CPU
// with bf16 matrix units those passes took as long as the products. Here each is one pass over a row held in
// registers, with the same arithmetic:
//   residual_layer_norm: x += float(term); y = bf16((x * rstd + (-rstd * mean)) * gamma + beta)
//   rope:                (a + ib)(c + is) in float32, rounded to bf16 in place
// Rounding to bf16 is round-to-nearest-even, as c10::BFloat16. The sums of the mean and variance are taken in
// another order than PyTorch's, so y may differ from PyTorch's LayerNorm in the last float32 bit before the
// rounding (tests/core/test_network_kernels.py holds both kernels to that).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>

// The AVX512-BF16 intrinsics need GCC 10 or clang 9; older compilers build the generic loops only (the module, and
// with it the rasteriser, must build everywhere).
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 9) || \
                            (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10))
#include <immintrin.h>
#define GSASR_HAVE_AVX512_PATH 1
#define GSASR_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

namespace gsasr {
namespace {

constexpr int64_t kRowsPerTask = 64;

inline float bf16_to_float(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even, as c10::BFloat16
  if (std::isnan(f)) return 0x7fc0;
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// What is added to the stream: nothing, one vector for every row, or a row of its own; float32 or bf16.
struct Term {
  const void* data = nullptr;
  bool bf16 = false;
  int64_t row_stride = 0;  // 0: the same vector for every row
  float at(int64_t row, int64_t j) const {
    const int64_t i = row * row_stride + j;
    return bf16 ? bf16_to_float(static_cast<const uint16_t*>(data)[i]) : static_cast<const float*>(data)[i];
  }
};

struct NormArgs {
  float* x;
  int64_t channels;
  Term term;
  const float* gamma;
  const float* beta;
  float eps;
  uint16_t* out;  // nullptr: add only
};

void residual_rows_generic(const NormArgs& a, int64_t begin, int64_t end) {
  const int64_t c = a.channels;
  for (int64_t r = begin; r < end; ++r) {
    float* x = a.x + r * c;
    if (a.term.data != nullptr) {
      for (int64_t j = 0; j < c; ++j) x[j] = x[j] + a.term.at(r, j);
    }
    if (a.out == nullptr) continue;
    float sum = 0.f;
    for (int64_t j = 0; j < c; ++j) sum += x[j];
    const float mean = sum / static_cast<float>(c);
    float squares = 0.f;
    for (int64_t j = 0; j < c; ++j) squares += (x[j] - mean) * (x[j] - mean);
    const float rstd = 1.f / std::sqrt(squares / static_cast<float>(c) + a.eps);
    const float shift = -rstd * mean;
    uint16_t* y = a.out + r * c;
    for (int64_t j = 0; j < c; ++j) y[j] = float_to_bf16((x[j] * rstd + shift) * a.gamma[j] + a.beta[j]);
  }
}

#ifdef GSASR_HAVE_AVX512_PATH
// Loads and stores of up to 16 lanes: `mask` selects the channels that exist (all 16 but in a row's last vector
// when its width is not a multiple of 16, e.g. 180); the others read as 0 and are not written.
GSASR_AVX512 inline __m512 load_bf16(const uint16_t* p, __mmask16 mask = 0xFFFF) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

// AVX512-BF16's conversion: round to nearest even, as float_to_bf16 (inputs are finite: NaN cannot reach here).
GSASR_AVX512 inline void store_bf16(uint16_t* p, __m512 v, __mmask16 mask = 0xFFFF) {
  _mm256_mask_storeu_epi16(p, mask, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

GSASR_AVX512 inline __m512 load_term(const Term& t, int64_t row, int64_t j, __mmask16 mask) {
  const int64_t i = row * t.row_stride + j;
  return t.bf16 ? load_bf16(static_cast<const uint16_t*>(t.data) + i, mask)
                : _mm512_maskz_loadu_ps(mask, static_cast<const float*>(t.data) + i);
}

// Rows of at most kMaxVectors * 16 channels (the decoder's 192 and 180, HAT-L's 192, SwinIR's 180).
constexpr int64_t kMaxVectors = 32;

GSASR_AVX512 void residual_rows_avx512(const NormArgs& a, int64_t begin, int64_t end) {
  // Four partial sums per reduction: one chain of dependent adds per row would leave the core waiting on their
  // latency (measured ~2x slower).
  const int64_t vectors = (a.channels + 15) / 16;
  const __mmask16 last = a.channels % 16 ? static_cast<__mmask16>((1u << (a.channels % 16)) - 1u) : 0xFFFF;
  const float inv_c = 1.f / static_cast<float>(a.channels);
  __m512 row[kMaxVectors];
  for (int64_t r = begin; r < end; ++r) {
    float* x = a.x + r * a.channels;
    __m512 sum[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t v = 0; v < vectors; ++v) {
      const __mmask16 mask = v + 1 < vectors ? 0xFFFF : last;
      __m512 value = _mm512_maskz_loadu_ps(mask, x + 16 * v);
      if (a.term.data != nullptr) {
        value = _mm512_add_ps(value, load_term(a.term, r, 16 * v, mask));
        _mm512_mask_storeu_ps(x + 16 * v, mask, value);
      }
      row[v] = value;  // 0 in lanes past the row's end
      sum[v & 3] = _mm512_add_ps(sum[v & 3], value);
    }
    if (a.out == nullptr) continue;
    const float total = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(sum[0], sum[1]),
                                                           _mm512_add_ps(sum[2], sum[3])));
    const __m512 mean = _mm512_set1_ps(total * inv_c);
    __m512 squares[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t v = 0; v < vectors; ++v) {
      const __m512 d = _mm512_maskz_sub_ps(v + 1 < vectors ? 0xFFFF : last, row[v], mean);
      squares[v & 3] = _mm512_add_ps(squares[v & 3], _mm512_mul_ps(d, d));
    }
    const float variance = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(squares[0], squares[1]),
                                                              _mm512_add_ps(squares[2], squares[3]))) * inv_c;
    const __m512 rstd = _mm512_set1_ps(1.f / std::sqrt(variance + a.eps));
    const __m512 shift = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(rstd, mean));
    uint16_t* y = a.out + r * a.channels;
    for (int64_t v = 0; v < vectors; ++v) {
      const __mmask16 mask = v + 1 < vectors ? 0xFFFF : last;
      const __m512 normed = _mm512_add_ps(_mm512_mul_ps(row[v], rstd), shift);
      const __m512 scaled = _mm512_add_ps(_mm512_mul_ps(normed, _mm512_maskz_loadu_ps(mask, a.gamma + 16 * v)),
                                          _mm512_maskz_loadu_ps(mask, a.beta + 16 * v));
      store_bf16(y + 16 * v, scaled, mask);
    }
  }
}

#endif

// Rotates columns [0, columns) of every token row (q, or q and k side by side, as the products wrote them):
// channel ch belongs to head (ch % width) / head_dim, pair (ch % head_dim) / 2. `rotation` (2, heads, tokens,
// head_dim) float32 holds per channel [c, c, ...] and [-s, s, ...]: out = x * rotation[0] + swap_pairs(x) *
// rotation[1], i.e. (a c - b s, b c + a s), the products of a complex multiplication.
struct RopeArgs {
  uint16_t* data;
  int64_t tokens, row_stride, columns, width, heads, head_dim;
  const float* rotation;
};

const float* rotation_row(const RopeArgs& a, int64_t part, int64_t head, int64_t token) {
  return a.rotation + ((part * a.heads + head) * a.tokens + token) * a.head_dim;
}

// The generic and AVX-512 row loops repeat their (row, head) walk: the AVX-512 one is compiled with its own target
// attribute, and GCC does not carry that attribute into a shared template or lambda body.
void rope_rows_generic(const RopeArgs& a, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t token = r % a.tokens;
    uint16_t* row = a.data + r * a.row_stride;
    for (int64_t start = 0; start < a.columns; start += a.head_dim) {
      const int64_t head = (start % a.width) / a.head_dim;
      const float* cs = rotation_row(a, 0, head, token);
      const float* sn = rotation_row(a, 1, head, token);
      for (int64_t k = 0; k < a.head_dim; k += 2) {
        const float re = bf16_to_float(row[start + k]), im = bf16_to_float(row[start + k + 1]);
        row[start + k] = float_to_bf16(re * cs[k] + im * sn[k]);
        row[start + k + 1] = float_to_bf16(im * cs[k + 1] + re * sn[k + 1]);
      }
    }
  }
}

#ifdef GSASR_HAVE_AVX512_PATH
GSASR_AVX512 void rope_rows_avx512(const RopeArgs& a, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t token = r % a.tokens;
    uint16_t* row = a.data + r * a.row_stride;
    for (int64_t start = 0; start < a.columns; start += a.head_dim) {
      const int64_t head = (start % a.width) / a.head_dim;
      const float* cs = rotation_row(a, 0, head, token);
      const float* sn = rotation_row(a, 1, head, token);
      for (int64_t k = 0; k < a.head_dim; k += 16) {
        const __m512 x = load_bf16(row + start + k);
        const __m512 swapped = _mm512_permute_ps(x, 0xB1);  // (b, a) in every pair
        const __m512 out = _mm512_add_ps(_mm512_mul_ps(x, _mm512_loadu_ps(cs + k)),
                                         _mm512_mul_ps(swapped, _mm512_loadu_ps(sn + k)));
        store_bf16(row + start + k, out);
      }
    }
  }
}
#endif

}  // namespace

// The vectorised kernels need AVX-512 with its bf16 conversions: the CPUs where amp="auto" picks bf16 (AMX-BF16
// CPUs have them too). Elsewhere the generic loops compute the same numbers, more slowly than PyTorch's own
// passes, so gsasr uses these kernels only where this is true (a forced amp="bf16" elsewhere keeps PyTorch's).
bool network_kernels_vectorized() {
#ifdef GSASR_HAVE_AVX512_PATH
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  return yes;
#else
  return false;
#endif
}

torch::Tensor residual_layer_norm_cpu(const torch::Tensor& x, const c10::optional<torch::Tensor>& term,
                                      const c10::optional<torch::Tensor>& gamma,
                                      const c10::optional<torch::Tensor>& beta, double eps, bool normalize,
                                      bool generic) {
  TORCH_CHECK(x.is_cpu() && x.scalar_type() == torch::kFloat32 && x.is_contiguous() && x.dim() >= 1,
              "gsasr native: the stream must be a contiguous float32 CPU tensor, got ", x.sizes(), " ",
              x.scalar_type());
  const int64_t channels = x.size(-1);
  const int64_t rows = channels == 0 ? 0 : x.numel() / channels;
  NormArgs args{x.data_ptr<float>(), channels, {}, nullptr, nullptr, static_cast<float>(eps), nullptr};
  if (term.has_value() && term->defined()) {
    const auto& t = *term;
    TORCH_CHECK(t.is_cpu() && t.is_contiguous() && (t.scalar_type() == torch::kFloat32 ||
                                                    t.scalar_type() == torch::kBFloat16),
                "gsasr native: the term must be a contiguous float32 or bf16 CPU tensor, got ", t.scalar_type());
    const bool per_row = t.numel() == x.numel();
    TORCH_CHECK(per_row || t.numel() == channels, "gsasr native: the term must have the stream's shape ",
                x.sizes(), " or one value per channel, got ", t.sizes());
    args.term = Term{t.data_ptr(), t.scalar_type() == torch::kBFloat16, per_row ? channels : 0};
  }
  torch::Tensor out;
  if (normalize) {
    TORCH_CHECK(gamma.has_value() && beta.has_value() && gamma->defined() && beta->defined(),
                "gsasr native: LayerNorm needs its weight and bias");
    for (const auto* p : {&*gamma, &*beta}) {
      TORCH_CHECK(p->is_cpu() && p->scalar_type() == torch::kFloat32 && p->is_contiguous() &&
                      p->numel() == channels,
                  "gsasr native: LayerNorm weight and bias must be contiguous float32 [", channels, "], got ",
                  p->sizes(), " ", p->scalar_type());
    }
    args.gamma = gamma->data_ptr<float>();
    args.beta = beta->data_ptr<float>();
    out = torch::empty(x.sizes(), x.options().dtype(torch::kBFloat16));
    args.out = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  }
  auto kernel = residual_rows_generic;
#ifdef GSASR_HAVE_AVX512_PATH
  if (!generic && network_kernels_vectorized() && channels <= 16 * kMaxVectors) {
    kernel = residual_rows_avx512;
  }
#endif
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
  return out;
}

void rope_cpu_(const torch::Tensor& tokens, int64_t columns, int64_t width, const torch::Tensor& rotation,
               bool generic) {
  TORCH_CHECK(tokens.is_cpu() && tokens.scalar_type() == torch::kBFloat16 && tokens.dim() == 3 &&
                  tokens.stride(2) == 1 && tokens.stride(1) == tokens.size(2) &&
                  tokens.stride(0) == tokens.size(1) * tokens.size(2),
              "gsasr native: rope needs contiguous bf16 CPU tokens (windows, tokens, channels), got ",
              tokens.sizes(), " ", tokens.scalar_type());
  TORCH_CHECK(rotation.is_cpu() && rotation.scalar_type() == torch::kFloat32 && rotation.is_contiguous() &&
                  rotation.dim() == 4 && rotation.size(0) == 2,
              "gsasr native: rope rotation must be contiguous float32 (2, heads, tokens, head_dim), got ",
              rotation.sizes());
  const int64_t heads = rotation.size(1), head_dim = rotation.size(3);
  TORCH_CHECK(head_dim % 2 == 0 && heads * head_dim == width && width > 0 && columns % width == 0 &&
                  columns <= tokens.size(2),
              "gsasr native: rope over ", columns, " columns of ", heads, " heads x ", head_dim,
              " does not fit the tokens ", tokens.sizes());
  // A token's position is its index inside its window: row n * T + t of the tokens is position t.
  TORCH_CHECK(rotation.size(2) == tokens.size(1), "gsasr native: rope rotation has ", rotation.size(2),
              " positions for windows of ", tokens.size(1), " tokens");
  RopeArgs args{reinterpret_cast<uint16_t*>(tokens.data_ptr<at::BFloat16>()), tokens.size(1), tokens.size(2),
                columns, width, heads, head_dim, rotation.data_ptr<float>()};
  auto kernel = rope_rows_generic;
#ifdef GSASR_HAVE_AVX512_PATH
  if (!generic && network_kernels_vectorized() && head_dim % 16 == 0) kernel = rope_rows_avx512;
#endif
  const int64_t rows = tokens.size(0) * tokens.size(1);
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
}

}  // namespace gsasr
