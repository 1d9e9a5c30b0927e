"""CoT generation against the reference's greedy CoT on the tiny checkpoint.

The prompt is built by our prompt builder from the reference's own image encodings (posterior mean, log-variance
and the posterior noise the reference drew for this prompt; the ViT embeddings of the same images), so this checks
the decoding loop: prefill, one token at a time against the cache, the logits each token was chosen from.
"""

import pytest
import torch
from PIL import Image

from hywu_core.hunyuan3.config import open_folder
from hywu_core.hunyuan3.cot import Sampling, cot_text, generate, pick
from hywu_core.hunyuan3.images import (
    NaflexPreprocessor,
    RatioBuckets,
    prepare_cond_image,
)
from hywu_core.hunyuan3.prompt import HunyuanTokenizer, InputImage, PromptBuilder
from hywu_core.hunyuan3.request import RequestBuilder
from hywu_core.hunyuan3.system_prompts import system_prompt
from tests.hunyuan3.helpers import DATA


def cot_prompt_row(reference):
    import json

    manifest = json.loads((DATA / "reference.json").read_text())
    folder = open_folder(str(DATA / "tiny_model"))
    tok = HunyuanTokenizer(folder.path)
    builder = PromptBuilder.from_config(tok, folder.config, folder.generation)
    buckets = RatioBuckets.from_config(folder.config)
    naflex = NaflexPreprocessor.from_config(folder.config["vit_processor"])
    specs, latents = [], []
    scale, shift = folder.config["vae"]["scaling_factor"], folder.config["vae"]["shift_factor"]
    for name, key in (("input_a.png", "a"), ("input_b.png", "b")):
        cond = prepare_cond_image(Image.open(DATA / name), buckets, naflex)
        mean, logvar = reference[f"vae.encode.{key}.mean"], reference[f"vae.encode.{key}.logvar"]
        sample = mean + torch.exp(0.5 * logvar) * reference[f"cot.vae_noise.{key}"]
        latents.append(((sample - shift) * scale)[:, :, 0])
        specs.append(InputImage(tuple(latents[-1].shape[-2:]), cond.bucket_index,
                                tuple(cond.vit.spatial_shape.tolist()), naflex.max_patches))
    sequence = builder.cot(manifest["cot"]["prompt"], specs, system_prompt=system_prompt("en_unified").strip())
    vit = reference["vit.aligner_output"].reshape(1, -1, folder.config["hidden_size"])
    row = RequestBuilder._row(sequence, sequence.input_ids, latents, vit, (0, 0), None, (0, 0), None)
    return row, tok


def test_greedy_cot_matches_the_reference(transformer, reference):
    row, tok = cot_prompt_row(reference)
    assert torch.equal(row.input_ids, reference["cot.prompt_ids"])
    expected = reference["cot.generated_ids"][0].tolist()
    tokens, logits = generate(transformer, row, tok, max_new_tokens=len(expected))
    assert tokens == expected
    ref_logits = reference["cot.step_logits"]
    assert (logits - ref_logits).abs().max() < 1e-4 * ref_logits.abs().max()
    assert cot_text(tok, "think", tokens).startswith("<think>")


def test_forced_transition_and_stop(transformer, reference):
    """After the transition token the forced follow-up comes next whatever the logits say; a stop token ends."""
    row, tok = cot_prompt_row(reference)
    first, _ = generate(transformer, row, tok, max_new_tokens=1)
    recaption = tok.special("recaption")
    tokens, _ = generate(transformer, row, tok, max_new_tokens=4, transitions={first[0]: [recaption]},
                         stops={recaption})
    assert tokens == [first[0], recaption]


def test_sampling_is_seeded_and_checked():
    logits = torch.linspace(0, 3, 50)
    draws = [pick(logits, Sampling(temperature=1.0, top_k=5, seed=0), torch.Generator().manual_seed(1))
             for _ in range(20)]
    assert set(draws) <= set(range(45, 50))
    assert pick(logits, None, None) == 49
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=0)
