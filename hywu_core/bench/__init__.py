"""Benchmarks: ratios measured in one run, interleaved, with the device named (paper §3.7).

    suite            `./hywu bench`: every CPU bench below in one run, JSON results
    real_width       the per-row LoRA on a real-width Linear and a real-width MMDiT stack
    end_to_end       one demo edit part by part (encode, generate, apply, patch, sample, restore)
    attention        factorized vs full NNT attention at growing token shapes up to Table 2's
    generator_parts  where the generator's time goes, part by part, beside a FLOP count
    hunyuan3_cache   HunyuanImage-3's prefix cache: a later step against the first
    hunyuan3_hywu    HY-WU on HunyuanImage-3: condition, generator, LoRA steps against base steps
    kernels          Triton per-row kernels vs the torch reference vs merged weights (CUDA)
    gpu              `./hywu bench --gpu`: the GPU check in one command (a CPU dry mode for CI)
    training         steps/s and peak memory with and without gradient checkpointing
    report           the README's bench tables, rendered from a bench JSON
    timing           medians of interleaved runs
"""
