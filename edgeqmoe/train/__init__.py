"""Training (torch): quantization-aware heads, mixtures of quantized experts with a
curiosity-driven Bayesian router, protocols, statistics and export to bundles."""
