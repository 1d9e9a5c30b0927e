"""Condition -> LoRA: instruction matching, width and NaN checks, and the generation cache (§3.3, §3.7)."""
import pytest
import torch

from hywu_core.condition import Condition, split_instructions
from hywu_core.generated_lora import GenerationCache, bundle_bytes, generate_lora


def condition(n: int = 2, width: int = 12, seed: int = 0, value: float | None = None) -> Condition:
    tokens = torch.randn(n, 5, width, generator=torch.Generator().manual_seed(seed))
    if value is not None:
        tokens[0, 0, 0] = value
    return Condition(tokens, torch.ones(n, 5, dtype=torch.bool), tuple(f"edit {i}" for i in range(n)),
                     tuple(f"{i:016x}" for i in range(n)), "tiny")


def test_instructions_broadcast_split_per_line_or_fail_clearly():
    assert split_instructions("make it sharper", 3) == ["make it sharper"] * 3
    assert split_instructions("brighten\n\ndarken\n", 2) == ["brighten", "darken"]
    assert split_instructions("use image 1 as the base\ntake the outfit from image 2", 1) == [
        "use image 1 as the base\ntake the outfit from image 2"]
    with pytest.raises(ValueError, match="3 instruction lines for a batch of 2 images"):
        split_instructions("a\nb\nc", 2)
    with pytest.raises(ValueError, match="instruction is empty"):
        split_instructions("  \n ", 2)


def test_condition_refuses_nan_and_fingerprints_by_content():
    with pytest.raises(ValueError, match="NaN/Inf"):
        condition(value=float("nan"))
    assert condition(seed=1).fingerprint == condition(seed=1).fingerprint != condition(seed=2).fingerprint


def test_generation_records_provenance_and_checks_width(generator):
    generator.source = "tiny.safetensors"
    generated = generate_lora(generator, condition())
    assert generated.batch_size == 2
    assert generated.items[1] == {"generator": "tiny.safetensors", "instruction": "edit 1", "source": f"{1:016x}"}
    with pytest.raises(ValueError, match="condition is 16 wide .* generator expects 12"):
        generate_lora(generator, condition(width=16))


def test_generated_nan_is_refused(generator):
    with torch.no_grad():
        generator.nnt.head_B.bias.fill_(float("inf"))
    with pytest.raises(ValueError, match="NaN/Inf values in blocks.0.attn.qkv"):
        generate_lora(generator, condition())


def test_cache_skips_the_generator_for_an_unchanged_condition(generator):
    calls = []
    generator.nnt.register_forward_hook(lambda *args: calls.append(1))
    size = bundle_bytes(generate_lora(generator, condition(seed=3)).bundle)
    cache = GenerationCache(max_bytes=2 * size)
    first = generate_lora(generator, condition(seed=3), cache=cache)
    again = generate_lora(generator, condition(seed=3), cache=cache)
    assert len(calls) == 2 and again.bundle is first.bundle
    generate_lora(generator, condition(seed=4), cache=cache)
    generate_lora(generator, condition(seed=5), cache=cache)
    assert cache.bytes == 2 * size
    generate_lora(generator, condition(seed=3), cache=cache)
    assert len(calls) == 5  # evicted: the budget holds two bundles


def test_cache_is_bounded_by_bytes_and_skips_a_bundle_over_the_budget(generator):
    size = bundle_bytes(generate_lora(generator, condition(n=1)).bundle)
    cache = GenerationCache(max_bytes=3 * size)
    big = generate_lora(generator, condition(n=4, seed=1), cache=cache)
    assert bundle_bytes(big.bundle) == 4 * size and cache.bytes == 0
    assert generate_lora(generator, condition(n=4, seed=1), cache=cache).bundle is not big.bundle
    for seed in range(5):
        generate_lora(generator, condition(n=1, seed=10 + seed), cache=cache)
        assert cache.bytes == min(seed + 1, 3) * size
    assert GenerationCache().max_bytes == 512 * 2**20
