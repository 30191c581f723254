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
