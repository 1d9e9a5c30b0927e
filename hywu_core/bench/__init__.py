"""Benchmarks: ratios measured in one run, interleaved, with the device named (paper §3.7).

    suite      `./hywu bench`: per-step cost of merge / dynamic vs base, end-to-end overhead,
               the generator, torch.compile, kernels; JSON results
    attention  factorized vs full NNT attention at the paper's token shape (Table 2)
    kernels    Triton per-row kernels vs the torch reference vs merged weights (CUDA)
    training   steps/s and peak memory with and without gradient checkpointing
    timing     medians of interleaved runs
"""
