// CPU window attention for the networks' bf16 path: softmax(q k^T * scale) v for every (window, head), with q, k, v
// read where the q/k/v products wrote them and the output written as the projection reads it. Keys and values may
// come from a larger window than the queries (HAT's overlapping cross-attention: 256 queries, 576 keys); an optional
// float32 bias (heads, queries, keys) is added to the scaled scores (the paper decoder's relative positions).
//
// Why: GSASR attends inside windows of 144 (or 256) tokens with heads of 32 channels, thousands of windows per
// image. PyTorch's CPU flash attention spends more time per (window, head) on its blocking and per-block passes
// than on the products (measured: a fixed ~5 us per pair plus ~15 us of work on an AMX Xeon, where the two
// products of a pair take well under 1 us). Here each (window, head) is one task: its scores in one oneDNN
// batch-reduce GEMM (at::native::cpublas::brgemm, bf16 x bf16 -> float32, the ukernel PyTorch's flash attention
// calls), an exact row softmax in float32, the weights rounded to bf16 (as the flash kernels round them) for the
// second GEMM, and the row sums divided out in float32 before the one rounding of the output to bf16.
// Only built into the x86 path: callers check attention_available() (AVX-512 with bf16, and a PyTorch whose
// brgemm can run bf16 here).
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// The AVX512-BF16 intrinsics need GCC 10 or clang 9; older compilers build the generic loops only (the module, and
// with it the rasteriser, must build everywhere).
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 9) || \
                            (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10))
#include <immintrin.h>
#define GSASR_HAVE_ATTENTION 1
#define GSASR_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))
#endif

namespace gsasr {

bool network_kernels_vectorized();  // network_cpu.cpp

#ifdef GSASR_HAVE_ATTENTION
namespace {

// 2^t for t <= 0 (scaled scores minus their row maximum, in units of log2 e): 2^n * p(f) with n = round(t) and p
// the degree-5 Taylor polynomial of e^(f ln 2) on f = t - n in [-1/2, 1/2]: relative error below 2.5e-6
// ((ln2 / 2)^6 / 720), a thousandth of the bf16 rounding every weight then gets. Working in base 2 (the scale
// times log2 e folded into one multiply) saves the range reduction's two extra products. Far below the maximum
// 2^n underflows to 0, which a softmax cannot tell from the exact value.
GSASR_AVX512_BF16 inline __m512 exp2_nonpositive(__m512 t) {
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  constexpr float ln2 = 0.693147180559945309f;
  __m512 p = _mm512_set1_ps(ln2 * ln2 * ln2 * ln2 * ln2 / 120.0f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ln2 * ln2 * ln2 * ln2 / 24.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ln2 * ln2 * ln2 / 6.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ln2 * ln2 / 2.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ln2));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

GSASR_AVX512_BF16 inline void store_bf16(uint16_t* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

GSASR_AVX512_BF16 inline void store_bf16_masked(uint16_t* p, __m512 v, __mmask16 mask) {
  _mm256_mask_storeu_epi16(p, mask, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

struct Operand {  // (windows, tokens, heads * head_dim) bf16 with any window and token strides
  const uint16_t* data;
  int64_t window_stride, token_stride;
};

struct AttentionArgs {
  Operand q, k, v;
  const float* bias;  // (heads, queries, tokens) added to the scaled scores, or nullptr
  uint16_t* out;  // (windows, query tokens, heads * head_dim), contiguous
  int64_t windows, queries, tokens, heads, head_dim;  // tokens: of k and v
  float scale;
};

// One (window, head): scores, softmax, weighted values. Buffers are the calling thread's.
struct Scratch {
  std::vector<uint32_t> keys;    // K^T in VNNI pairs: (head_dim / 2, tokens) of (k[t][2p], k[t][2p + 1])
  std::vector<uint32_t> values;  // V in VNNI pairs: (tokens / 2, head_dim) of (v[2p][j], v[2p + 1][j])
  std::vector<float> scores;     // (queries, padded tokens)
  std::vector<uint16_t> weights; // (queries, padded tokens) bf16
  std::vector<float> sums, outputs;
};

GSASR_AVX512_BF16 void attend(const AttentionArgs& a, int64_t window, int64_t head, Scratch& s) {
  const int64_t t_count = a.tokens, d = a.head_dim, pairs = a.tokens / 2 + a.tokens % 2;
  const int64_t ld = (t_count + 15) / 16 * 16;  // padded row length of scores and weights
  const int64_t column = head * d;
  const uint16_t* q = a.q.data + window * a.q.window_stride + column;
  const uint16_t* k = a.k.data + window * a.k.window_stride + column;
  const uint16_t* v = a.v.data + window * a.v.window_stride + column;

  // K^T packed: B of the score GEMM is (head_dim x tokens) in VNNI pairs, i.e. K's rows read as head_dim / 2
  // 32-bit words, transposed: 16 tokens of one word at a time (a gather; masked at the last block of tokens).
  const int64_t word_stride = a.k.token_stride / 2;
  const __m512i token_offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                                                     13, 14, 15),
                                                   _mm512_set1_epi32(static_cast<int>(word_stride)));
  for (int64_t t0 = 0; t0 < t_count; t0 += 16) {
    const __mmask16 lanes = t_count - t0 >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (t_count - t0)) - 1u);
    const int* base = reinterpret_cast<const int*>(k + t0 * a.k.token_stride);
    for (int64_t p = 0; p < d / 2; ++p) {
      const __m512i words = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), lanes, token_offsets, base + p, 4);
      _mm512_mask_storeu_epi32(s.keys.data() + p * t_count + t0, lanes, words);
    }
  }
  // V packed: B of the output GEMM is (tokens x head_dim) in VNNI pairs: two token rows interleaved element by
  // element, 32 channels at a time (a zero token pads odd T).
  const __m512i low_half = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7,
                                            38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i high_half = _mm512_add_epi16(low_half, _mm512_set1_epi16(16));
  for (int64_t p = 0; p < pairs; ++p) {
    const uint16_t* even = v + 2 * p * a.v.token_stride;
    const bool has_odd = 2 * p + 1 < t_count;
    const uint16_t* odd = v + (2 * p + 1) * a.v.token_stride;
    uint16_t* packed = reinterpret_cast<uint16_t*>(s.values.data() + p * d);
    for (int64_t j = 0; j < d; j += 32) {
      const int64_t n = std::min<int64_t>(32, d - j);
      const __mmask32 in = n == 32 ? 0xFFFFFFFFu : static_cast<__mmask32>((1u << n) - 1u);
      const __m512i e = _mm512_maskz_loadu_epi16(in, even + j);
      const __m512i o = has_odd ? _mm512_maskz_loadu_epi16(in, odd + j) : _mm512_setzero_si512();
      const int64_t out = 2 * n;  // 16-bit values written: the first 32 from low_half, the rest from high_half
      _mm512_mask_storeu_epi16(packed + 2 * j, out >= 32 ? 0xFFFFFFFFu : static_cast<__mmask32>((1u << out) - 1u),
                               _mm512_permutex2var_epi16(e, low_half, o));
      if (out > 32) {
        _mm512_mask_storeu_epi16(packed + 2 * j + 32,
                                 out >= 64 ? 0xFFFFFFFFu : static_cast<__mmask32>((1u << (out - 32)) - 1u),
                                 _mm512_permutex2var_epi16(e, high_half, o));
      }
    }
  }

  at::native::cpublas::brgemm(a.queries, t_count, d, a.q.token_stride, t_count, ld, false,
                              reinterpret_cast<const at::BFloat16*>(q),
                              reinterpret_cast<const at::BFloat16*>(s.keys.data()), s.scores.data());

  const __m512 scale = _mm512_set1_ps(a.scale);
  const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
  const int64_t full = t_count / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (t_count - full)) - 1u);
  const float* bias_rows = a.bias == nullptr ? nullptr : a.bias + head * a.queries * t_count;
  for (int64_t i = 0; i < a.queries; ++i) {
    float* row = s.scores.data() + i * ld;
    __m512 row_scale = scale;
    if (bias_rows != nullptr) {  // scores * scale + bias, in place; then the row is already scaled
      const float* b = bias_rows + i * t_count;
      for (int64_t j = 0; j < full; j += 16) {
        _mm512_storeu_ps(row + j, _mm512_fmadd_ps(_mm512_loadu_ps(row + j), scale, _mm512_loadu_ps(b + j)));
      }
      if (tail) {
        _mm512_mask_storeu_ps(row + full, tail, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, row + full), scale,
                                                                _mm512_maskz_loadu_ps(tail, b + full)));
      }
      row_scale = _mm512_set1_ps(1.0f);
    }
    row_scale = _mm512_mul_ps(row_scale, log2e);  // exponents in base 2
    __m512 best = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < full; j += 16) best = _mm512_max_ps(best, _mm512_loadu_ps(row + j));
    if (tail) best = _mm512_mask_max_ps(best, tail, best, _mm512_maskz_loadu_ps(tail, row + full));
    const __m512 shift = _mm512_mul_ps(_mm512_set1_ps(_mm512_reduce_max_ps(best)), row_scale);
    __m512 sum = _mm512_setzero_ps();
    uint16_t* weights = s.weights.data() + i * ld;
    for (int64_t j = 0; j < full; j += 16) {
      const __m512 e = exp2_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(row + j), row_scale, shift));
      sum = _mm512_add_ps(sum, e);
      store_bf16(weights + j, e);
    }
    if (tail) {
      const __m512 e = exp2_nonpositive(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(tail, row + full), row_scale, shift));
      sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(tail, e));
      store_bf16_masked(weights + full, e, tail);
    }
    s.sums[i] = _mm512_reduce_add_ps(sum);
    if (t_count % 2) weights[t_count] = 0;  // the padding token of the packed values
  }

  at::native::cpublas::brgemm(a.queries, d, 2 * pairs, ld, d, d, false,
                              reinterpret_cast<const at::BFloat16*>(s.weights.data()),
                              reinterpret_cast<const at::BFloat16*>(s.values.data()), s.outputs.data());

  uint16_t* out = a.out + (window * a.queries) * a.heads * d + column;
  for (int64_t i = 0; i < a.queries; ++i) {
    const __m512 inverse = _mm512_set1_ps(1.0f / s.sums[i]);
    for (int64_t j = 0; j < d; j += 16) {  // head_dim need not be a multiple of 16 (the paper decoder's is 30)
      const __mmask16 lanes = d - j >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (d - j)) - 1u);
      store_bf16_masked(out + i * a.heads * d + j,
                        _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, s.outputs.data() + i * d + j), inverse), lanes);
    }
  }
}

Operand operand(const torch::Tensor& t) {
  return {reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()), t.stride(0), t.stride(1)};
}

}  // namespace
#endif

bool attention_available() {
#ifdef GSASR_HAVE_ATTENTION
  static const bool yes = network_kernels_vectorized() && at::native::cpublas::could_pack(at::kBFloat16);
  return yes;
#else
  return false;
#endif
}

torch::Tensor window_attention_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   int64_t heads, double scale, const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(attention_available(), "gsasr native: window attention needs AVX-512 with bf16 and PyTorch's bf16 "
              "brgemm on this CPU (check attention_available() first)");
  for (const auto* t : {&q, &k, &v}) {
    TORCH_CHECK(t->is_cpu() && t->scalar_type() == torch::kBFloat16 && t->dim() == 3 && t->stride(2) == 1 &&
                    t->stride(1) % 2 == 0 && t->stride(0) % 2 == 0 &&
                    reinterpret_cast<uintptr_t>(t->data_ptr()) % 4 == 0,
                "gsasr native: q, k, v must be bf16 CPU (windows, tokens, channels) with unit channel stride and "
                "even strides, got ", t->sizes(), " ", t->strides(), " ", t->scalar_type());
  }
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(2) == q.size(2),
              "gsasr native: k and v must have one shape, with q's windows and channels, got ", q.sizes(), ", ",
              k.sizes(), " and ", v.sizes());
  const int64_t windows = q.size(0), queries = q.size(1), tokens = k.size(1), width = q.size(2);
  TORCH_CHECK(heads >= 1 && width % heads == 0 && (width / heads) % 2 == 0 && tokens >= 1 && queries >= 1,
              "gsasr native: window attention needs an even head dimension (bf16 pairs), got ", width,
              " channels in ", heads, " heads");
  const float* bias_data = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_cpu() && bias->scalar_type() == torch::kFloat32 && bias->is_contiguous() &&
                    bias->dim() == 3 && bias->size(0) == heads && bias->size(1) == queries && bias->size(2) == tokens,
                "gsasr native: the attention bias must be contiguous float32 (heads, queries, keys) = (", heads, ", ",
                queries, ", ", tokens, "), got ", bias->sizes(), " ", bias->scalar_type());
    bias_data = bias->data_ptr<float>();
  }
  auto out = torch::empty({windows, queries, width}, q.options().memory_format(at::MemoryFormat::Contiguous));
#ifdef GSASR_HAVE_ATTENTION
  AttentionArgs args{operand(q), operand(k), operand(v), bias_data,
                     reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()),
                     windows, queries, tokens, heads, width / heads, static_cast<float>(scale)};
  at::parallel_for(0, windows * heads, 1, [&](int64_t begin, int64_t end) {
    const int64_t d = args.head_dim, ld = (tokens + 15) / 16 * 16, pairs = tokens / 2 + tokens % 2;
    Scratch s{std::vector<uint32_t>(d / 2 * tokens), std::vector<uint32_t>(pairs * d),
              std::vector<float>(args.queries * ld), std::vector<uint16_t>(args.queries * ld + 1, 0),
              std::vector<float>(args.queries), std::vector<float>(args.queries * d)};
    for (int64_t task = begin; task < end; ++task) attend(args, task / heads, task % heads, s);
    at::native::cpublas::brgemm_release();
  });
#else
  (void)bias_data;  // unreachable: attention_available() is false without the AVX-512 path
#endif
  return out;
}

}  // namespace gsasr
