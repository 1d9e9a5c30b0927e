"""The prompt layout (hywu_core.hunyuan3.prompt) against the reference's recorded sequences.

tests/data/hunyuan3/ holds the tiny checkpoint's tokenizer and what the reference built with it: the edit and
text-to-image diffusion prompts (`inputs.*`, `t2i.inputs.*`: ids for [cond, uncond], image masks, <timestep>
slots, 2D RoPE positions, the attention mask), the img_ratio prefill (`condition.input_ids`) and the CoT prompt
(`cot.*`). The image-side numbers (token grids, ratio buckets, ViT lengths) are taken from the manifest.
"""
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hywu_core.hunyuan3.prompt import (
    HunyuanTokenizer,
    InputImage,
    OutputImage,
    PromptBuilder,
    TokenizerError,
)
from hywu_core.hunyuan3.system_prompts import PROMPTS, system_prompt
from tests.hunyuan3.helpers import DATA

FOLDER = DATA / "tiny_model"


@pytest.fixture(scope="module")
def ref():
    manifest = json.loads((DATA / "reference.json").read_text())
    tensors = load_file(str(DATA / "reference.safetensors"))
    return manifest, tensors


@pytest.fixture(scope="module")
def tok():
    return HunyuanTokenizer(str(FOLDER))


@pytest.fixture(scope="module")
def builder(tok):
    config = json.loads((FOLDER / "config.json").read_text())
    generation = json.loads((FOLDER / "generation_config.json").read_text())
    return PromptBuilder.from_config(tok, config, generation)


def input_images(seq_info):
    return [InputImage((c["vae"]["token_height"], c["vae"]["token_width"]), c["vae"]["ratio_index"],
                       (c["vit"]["token_height"], c["vit"]["token_width"]), c["vit"]["token_length"])
            for c in seq_info["cond_images"]]


def output_image(seq_info):
    g = seq_info["gen_image"]
    return OutputImage((g["token_height"], g["token_width"]), g["ratio_index"])


def unpack_mask(tensors, manifest, name):
    shape = manifest["tensors"][name]["unpacked_shape"]
    bits = np.unpackbits(tensors[name].numpy(), axis=-1, count=shape[-1], bitorder="little")
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


SYSTEM = system_prompt("en_unified")


@pytest.mark.parametrize("prefix, prompt_key, cot_key", [("inputs", "edit_prompt", "edit_cot_text"),
                                                         ("t2i.inputs", "t2i_prompt", "t2i_cot_text")])
def test_diffusion_prompt_matches_reference(ref, tok, builder, prefix, prompt_key, cot_key):
    manifest, tensors = ref
    info = manifest["sequences"][prefix]
    seq = builder.image(manifest["inputs"][prompt_key], input_images(info), output_image(info),
                        system_prompt=SYSTEM, cot=manifest["inputs"][cot_key])
    ids = seq.ids()
    assert torch.equal(ids, tensors[f"{prefix}.input_ids"])
    assert tok.decode(seq.input_ids) == info["decoded_cond"]
    rows = ids.shape[0]
    for kind, key in (("gen", "image_mask"), ("cond_vae", "cond_vae_image_mask"),
                      ("cond_vit", "cond_vit_image_mask")):
        want = tensors.get(f"{prefix}.{key}")
        got = seq.slot_mask(kind).expand(rows, -1)
        assert torch.equal(got, want) if want is not None else not got.any(), key
    assert torch.equal(seq.timestep_positions("gen").expand(rows, -1), tensors[f"{prefix}.timesteps_index"])
    if info["cond_images"]:
        assert torch.equal(seq.timestep_positions("cond_vae").expand(rows, -1),
                           tensors[f"{prefix}.cond_timesteps_index"])
    assert torch.equal(seq.rope_yx.expand(rows, -1, -1), tensors[f"{prefix}.rope_pos_yx"])
    want = unpack_mask(tensors, manifest, f"{prefix}.attention_mask")  # recorded rows are identical
    assert torch.equal(seq.attention_mask(want.shape[0]), want)


def test_uncond_row_drops_prompt_and_cot_only(ref, tok, builder):
    manifest, _ = ref
    info = manifest["sequences"]["inputs"]
    seq = builder.image("a b c", input_images(info), output_image(info), system_prompt=SYSTEM,
                        cot="<think>x y</think><recaption>z</recaption>")
    changed = seq.input_ids != seq.uncond_ids
    assert (seq.uncond_ids[changed] == tok.special("cfg")).all()
    dropped = tok.encode("a b c") + tok.encode("x y") + tok.encode("z")
    assert seq.input_ids[changed].tolist() == dropped


def test_ratio_prefill_matches_reference(ref, builder):
    manifest, tensors = ref
    info = manifest["sequences"]["inputs"]
    seq = builder.ratio(manifest["inputs"]["edit_prompt"], input_images(info), system_prompt=SYSTEM,
                        cot=manifest["inputs"]["edit_cot_text"])
    assert torch.equal(seq.ids(), tensors["condition.input_ids"])
    assert seq.input_ids[-3:].tolist() == builder.ratio_prefix_ids
    assert seq.attention_mask().shape == (1, 1, len(seq), len(seq))


def test_cot_prompt_and_decode_match_reference(ref, tok, builder):
    manifest, tensors = ref
    info = manifest["sequences"]["inputs"]
    seq = builder.cot(manifest["cot"]["prompt"], input_images(info), system_prompt=SYSTEM, mode="think")
    assert torch.equal(seq.ids(), tensors["cot.prompt_ids"])
    generated = tensors["cot.generated_ids"][0].tolist()
    end = tok.special("end_of_recaption")
    kept = generated[:generated.index(end) + 1] if end in generated else generated
    assert "<think>" + tok.decode(kept) == manifest["cot"]["cot_text"]


def test_tokenizer_matches_transformers(tok, ref):
    transformers = pytest.importorskip("transformers")
    manifest, tensors = ref
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(FOLDER))
    texts = [SYSTEM, manifest["inputs"]["edit_prompt"], manifest["inputs"]["edit_cot_text"], "User: ",
             "Assistant: <think>", "\n\n", "<answer><boi><img_size_256>", "naïve  spaces\tand\nnewlines, don't!"]
    for text in texts:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False), text
    ids = tensors["inputs.input_ids"][0].tolist()
    assert tok.decode(ids) == hf.decode(ids)
    assert tok.bos_id == hf.bos_token_id and tok.eos_id == hf.eos_token_id


def test_system_prompts_are_the_release_texts():
    digests = {
        "en_vanilla": "67c3a484fb0c171db99f08b4362cf7a58ba0f5da85f60989c6a7eb5bfeb4f1cf",
        "en_recaption": "3db0f45e825e4079d6964dabf808d833e8144d618dc04d14f2f604913648a744",
        "en_think_recaption": "dbba2f3f3d1415e46243df84802cfba8443858aedbf83871f4be82271db19fbb",
        "en_unified": "876a734167e95468c7d969d717a1e0463d418c43919ab1c1b90d6d6ba9cca227",
    }
    assert {name: hashlib.sha256(text.encode()).hexdigest() for name, text in PROMPTS.items()} == digests
    assert system_prompt("None") is None
    assert system_prompt("dynamic", "image") == PROMPTS["en_vanilla"].strip("\n")
    assert system_prompt("dynamic", "think_recaption", custom="mine") == "mine"
    with pytest.raises(ValueError, match="unknown system prompt"):
        system_prompt("en_vanila")


def test_empty_prompt_is_refused(builder):
    for prompt in ("", "   \n"):
        with pytest.raises(ValueError, match="prompt is empty"):
            builder.ratio(prompt)


def test_more_than_three_images_is_refused(ref, builder):
    image = input_images(ref[0]["sequences"]["inputs"])[0]
    with pytest.raises(ValueError, match="at most 3"):
        builder.cot("edit", [image] * 4)


def test_a_sequence_over_max_length_is_refused(ref, tok):
    info = ref[0]["sequences"]["inputs"]
    short = PromptBuilder(tok, 256, max_length=100)
    with pytest.raises(ValueError, match="more than the model's max_length 100"):
        short.image("edit", input_images(info), output_image(info))


def test_a_missing_special_token_is_named(tok, tmp_path):
    with pytest.raises(TokenizerError, match="<img_size_1024>"):
        PromptBuilder(tok, 1024)
    with pytest.raises(KeyError, match="no special token is named"):
        tok.special("bogus")
    shutil.copy(FOLDER / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(TokenizerError, match="no bos_token"):
        HunyuanTokenizer(str(tmp_path))
