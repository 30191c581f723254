"""Every numerical tolerance used by the tests, each with the reason it is what it is.

Tests import these names; no test writes a tolerance literal of its own.
"""

# Golden parity (../shared/golden/README.md "What must hold"): the official model run in float32 on the CPU.
# Our port reorders some float32 sums (e.g. the constant scale attention), so bit equality is not expected;
# 1e-4 is the project's published contract for the super-resolved image...
GOLDEN_SR_ABS = 1e-4
# ...and for raw Gaussian parameters, relative to max(1, |ref|) because means and logits can exceed 1.
GOLDEN_GS_REL = 1e-4

# Encoders (tests/core/test_encoder_rdn.py, test_encoder_swinir.py): our forward against a naive re-statement of
# the official one on tiny float32 models with O(1) activations. Only summation order differs (fused SDPA vs
# explicit softmax, bias and shift mask summed before being added, preallocated concatenation), which moves
# float32 results by a few ulp; 1e-5 leaves ~10x margin and still catches any wrong mask, shift or skip.
ENCODER_REFERENCE_ABS = 1e-5

# HAT encoder (tests/core/test_encoder_hat.py) also uses ENCODER_REFERENCE_ABS against its naive statement, for the
# same reason (fused SDPA vs explicit softmax, RoPE as complex products vs cos/sin).
# bf16 autocast on the CPU (tests/core/test_encoder_hat.py): every linear/conv rounds to bf16 (8 mantissa bits,
# ~4e-3 relative) across a tiny but deep stack; the check is only that autocast runs with sane values (no dtype
# error, no blow-up), so the error relative to the float32 output's peak is allowed 5 %.
HAT_BF16_AUTOCAST_REL = 0.05

# --- Rasteriser (tests/render/test_reference.py) -------------------------------------------------------------
# The reference against the golden port of the official kernel: identical float32 arithmetic per term, only the
# order of the float32 sums differs (measured max 2.4e-6 on pixel values up to ~4.2, i.e. a few ulps); 1e-5 is
# ten times tighter than the model-level GOLDEN_SR_ABS, so the rasteriser alone cannot eat that budget.
GOLDEN_RENDER_ABS = 1e-5
# The reference against a dense evaluation of the same float32 kernel arithmetic (or against itself with another
# region or chunking): the same terms summed in another order. Sums of a few dozen terms <= 1: a few ulps of 50.
RENDER_SUM_ORDER_ATOL = 2e-6
RENDER_SUM_ORDER_RTOL = 2e-6
# The reference against the exact float64 pixel-space formula with |rho| <= 0.9: the float32 quadratic form loses
# ~1/(1 - rho^2) x 1e-7 relative to cancellation, times |exponent| * weight <= 0.37, over ~40 Gaussians per pixel
# (measured max 8e-7).
RENDER_FLOAT64_ATOL = 5e-6
RENDER_FLOAT64_RTOL = 1e-5
# One Gaussian rendered with and without the 8-sigma cut: every dropped weight is <= exp(-32) = 1.3e-14 (colour
# <= 1; measured max 4.3e-15); the margin covers the float32 cancellation of the quadratic form when |rho| -> 1,
# which can lift a far weight by a few units of the exponent.
SIGMA_CUTOFF_TAIL_ABS = 1e-13

# Decoder (tests/core/test_decoder.py).
# The closed-form scale attention, out_proj(W_v e + b_v), against nn.MultiheadAttention's uniform-softmax average
# of identical values: only float32 summation order differs, on O(1) values (observed 4e-7); 1e-5 leaves ~25x.
DECODER_SCALE_ATTN_ABS = 1e-5
# A batch with one scale per image against each image alone (tiny float32 model, O(1) outputs): only the GEMM
# blocking changes with the row count (observed 1.5e-7); 1e-5 still catches any mixing between images.
DECODER_BATCH_ABS = 1e-5
# Winograd F(2x2, 3x3) convolutions (tests/core/test_winograd.py) against a float64 direct convolution, relative to
# the output's peak: the transforms only add and subtract (and halve the weights), so the error is the float32
# products' own, summed over 16 instead of 9 terms per channel (measured <= 5e-7 at 192 channels; the direct float32
# conv measures ~2e-6 on the same cases). 2e-6 still fails any wrong transform coefficient (errors O(0.1)).
WINOGRAD_CONV_REL = 2e-6
# The tiny decoder with Winograd seed-grid convolutions against the direct ones (O(1) outputs): each conv output
# moves by a few float32 ulps (WINOGRAD_CONV_REL), and ~10 layers after the convs carry that on unamplified
# (observed 1.3e-7); 1e-5 still fails any wrong transform or misplaced tile, which move outputs by O(0.1).
DECODER_WINOGRAD_ABS = 1e-5
# Golden raw Gaussians with encoder + decoder in float32 (tests/core/test_golden_parity.py). The golden vectors
# are themselves a float32 run whose rounding noise, amplified by the untrained rule weights through 16 encoder
# and ~40 decoder layers, is ~5e-5 relative (measured against a float64 run); ours is another ~7e-5. The official
# code itself, run here in float32, is 1.08e-4 away from golden (EDSR x2). The exact-function check at
# GOLDEN_GS_REL runs in float64; this one guards the production precision, with ~3x margin over the observed
# 1.08e-4 (any real error is O(0.1) or more).
GOLDEN_GS_REL_FLOAT32 = 3e-4

# Size of "one float32 rounding" as relative noise (2^-23 ~ 1.2e-7), used to show how sensitive the golden images
# are to their Gaussians (tests/core/test_golden_parity.py::test_golden_images_are_ill_conditioned).
ONE_ULP_FLOAT32 = 2.0 ** -23

# --- Tiling (tests/core/test_tiling.py) ----------------------------------------------------------------------
# Tiled (48 LR px cores + 32 px context) against one whole-image run, 192x160 structured image, tiny random
# model, x2.7. The Gaussians are rendered together, so only a tile's lost context differs: near the image border
# the decoder's cyclic window shift wraps onto the tile's far side instead of the image's far side, and deep
# features see a cut image beyond the context. 50 dB (RMS error 0.3 % of full range) is invisible and still
# fails on any misplaced tile, wrong mean conversion or seam (those cost 20-35 dB).
TILED_VS_WHOLE_MIN_PSNR_DB = 50.0

# --- Native rasteriser (tests/render/test_native.py) ---------------------------------------------------------
# The compiled cpu/cuda kernels against the reference: the contract, 1e-5 absolute. What differs: the
# order of the float32 sums (a few ulps), their polynomial exp (~2 ulps of each weight, on pixel sums of a few
# units: ~1e-6) and their 6-sigma support (each dropped weight < exp(-18) = 1.5e-8, a few hundred Gaussians at
# most per pixel). Measured maxima are reported by bench/bench_render.py.
NATIVE_RENDER_ABS = 1e-5
# Golden images rendered by the compiled kernels: the same 1e-5 as GOLDEN_RENDER_ABS (the reference is 2.4e-6
# from golden, the kernels ~1e-6 from the reference), so the rasteriser alone cannot eat GOLDEN_SR_ABS.
NATIVE_GOLDEN_RENDER_ABS = 1e-5

# Conditioned golden set, end to end in float32 (tests/core/test_golden_conditioned.py): the and the golden
# README's contract. On these tiny canvases the official window edge (|gx - cx| <= dmax) is a discontinuity: a
# centre one float32 ulp away switches a whole weight on or off (the golden README measures 8 of 9690 pixels moved
# by up to 0.042 from 1e-7 relative noise). So at most 0.1 % of the pixels may exceed GOLDEN_SR_ABS; every other
# pixel must be within it.
CONDITIONED_SR_OUTLIER_FRACTION = 1e-3

# The triton backend (tests/render/test_native.py, test_triton.py) against the reference: the 1e-5. Its
# arithmetic is the reference's term for term (same float32 window test, same order in the quadratic form, no
# fused multiply-adds, same exponent clamp and weight flush); what differs is the order of the float32 sums (a
# few ulps), the exp of the GPU (ex2.approx after a multiply by log2 e: ~2 ulps of each weight; NumPy's exp under
# the interpreter) and the 6-sigma support of the native kernels (each dropped weight < exp(-18) = 1.5e-8).
# Measured under the interpreter: <= 2.4e-6 on every case.
TRITON_RENDER_ABS = 1e-5
# Golden images rendered by the triton backend: the same 1e-5 as GOLDEN_RENDER_ABS, for the same reason as
# NATIVE_GOLDEN_RENDER_ABS.
TRITON_GOLDEN_RENDER_ABS = 1e-5

# --- GSASR as an UPSCALE_MODEL (tests/workflows/test_real_comfyui.py) ----------------------------------------
# ComfyUI's "Upscale Image (using Model)" against our own node, same model and scale (x2.5 of 619 x 211, both saved
# as 8-bit PNG, compared on the common 1547 x 527). ComfyUI runs the model on 512 px tiles with 32 px of overlap,
# each rendered on its own and blended with a feather; our node renders all Gaussians together. They differ by a
# tile's lost context (TILED_VS_WHOLE_MIN_PSNR_DB, with 32 px of overlap instead of 32 px of context), by each
# tile's scale rounded to whole output pixels (round(2.5 w) / w: under 0.5 px at a tile's far edge) and by the
# 8-bit rounding of each PNG. Measured 59.2 dB with the test model of test_real_comfyui.py, on which a one-pixel
# shift costs 30.6 dB: 40 dB passes the first with room and fails any misplaced or mis-scaled tile.
UPSCALE_MODEL_VS_NODE_MIN_PSNR_DB = 40.0

# --- CPU bf16 path (tests/core/test_low_precision.py) ----------------------------------------------------------
# The bf16 path (weights cast once, channels-last convolutions, stacked q/k/v products, bf16 workspace heads)
# against plain autocast of the float32 modules, tiny model, relative to each Gaussian column's peak: the same bf16
# roundings of the same weights and activations (measured: bitwise equal on an AMX Xeon). Other CPUs' matrix kernels
# may block the stacked products or channels-last convolutions differently and round an intermediate one bf16 ulp
# the other way. 1e-3 is a tenth of the bf16 path's own distance from float32 on this model (~1e-2), so it still
# fails a wrong weight, layout or head, and a float32 run sneaking in is caught separately.
BF16_PATH_VS_AUTOCAST_REL = 1e-3
# The fused bf16 linear + GELU (one rounding of the float32 accumulator's GELU) against the module's linear then GELU
# (autocast: the linear's output rounded to bf16, then the GELU's), relative to the output's peak: the two differ by
# at most the module's two bf16 roundings (2^-8 relative each, and the first one's effect through GELU's slope <= 1.13;
# measured <= 7e-3). 2^-6 leaves 2x margin and still fails a wrong activation or bias (a ReLU instead of the GELU
# is up to 0.17 off, several percent of the peak).
BF16_FUSED_GELU_REL = 2.0 ** -6

# The fused CPU glue (cuda/network_cpu.cpp, tests/core/test_network_kernels.py): its LayerNorm sums the mean and
# variance in another order than PyTorch's, so before the rounding to bf16 a value can differ in its last float32 bit
# and then, when it sits next to a tie, round one bf16 step the other way; the RoPE kernel's complex products can
# differ the same way from PyTorch's vectorised complex multiply. Measured on random rows: ~4e-5 of the values (about
# 2^-8 * 2^-16 * 192 tie-adjacent chances per row). 1e-3 is 25x that; a wrong mean, variance, weight or angle moves
# almost every value. Every value, flipped or not, must still be within one bf16 step of the float64 result.
FUSED_NORM_BF16_FLIP_FRACTION = 1e-3
# The bf16 path with the fused kernels against the same path with PyTorch's glue and SDPA, each against float32 on the
# small test models: the kernels only move some roundings by one bf16 step, so the error from float32 keeps its size.
# Per Gaussian column, its rms (measured <= 1.02x on the four small models) within 1.1x; its maximum, one value out
# of a few thousand that moves with every flipped rounding (measured up to 1.16x, and as often below 1), within 1.5x.
# A wrong LayerNorm, rotation, scale or head multiplies the error 10-100x.
FUSED_GLUE_ERROR_GROWTH = 1.1
FUSED_GLUE_MAX_ERROR_GROWTH = 1.5
# The window attention kernel (cuda/attention_cpu.cpp) against PyTorch's SDPA on the same bf16 q, k, v, both
# measured from the float64 attention: both keep float32 scores and softmax and round the weights to bf16 for the
# second product, so their errors are the same bf16 roundings (measured: max equal, mean within 0.03 %). Its exp is a
# polynomial within 2.5e-6 relative, a thousandth of a bf16 step. 1.1 fails a wrong scale, head or token (errors of
# the order of the values themselves, ~100x).
WINDOW_ATTENTION_ERROR_GROWTH = 1.1
