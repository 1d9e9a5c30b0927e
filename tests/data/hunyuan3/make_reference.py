"""Build the tiny HunyuanImage-3.0-Instruct checkpoint and the reference tensors our port is tested against.

This script runs ONLY in a separate environment where the public reference code (Tencent-Hunyuan/HY-WU,
package ``wu``) is importable and transformers==4.57.1, diffusers, accelerate and einops are installed. It is
not part of our package and is never collected by pytest. Rerun it from the repository root with::

    HY3_REF_SRC=/tmp/hy3ref_src ~/.cache/hywu/hy3ref/bin/python tests/data/hunyuan3/make_reference.py

``HY3_REF_SRC`` is the checkout of the reference (the folder holding ``wu/``). The run takes about a minute on
one CPU thread and is deterministic: rerunning it rewrites every file below bitwise identically (same reference
commit, same torch / transformers / tokenizers / Pillow versions).

What it writes next to itself:

- ``tiny_model/``: a random tiny checkpoint in the Hugging Face folder layout (config.json,
  generation_config.json, two safetensors shards + index, tokenizer files), loaded back through the
  reference's own ``from_pretrained`` and ``load_tokenizer`` before anything else runs;
- ``input_a.png``, ``input_b.png``: the two conditioning images;
- ``reference.safetensors`` + ``reference.json``: per-stage tensors recorded while the reference runs, and a
  manifest describing every tensor, the inputs and how each was produced;
- ``reference_edit.png``, ``reference_t2i.png``: the images the reference pipeline returns.

The reference is used as shipped. A few things that only work on CUDA are patched from outside, each by a
wrapper of a few lines (see ``patch_reference``); nothing in the reference checkout is edited.
"""

import functools
import hashlib
import inspect
import itertools
import json
import math
import os
import random
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE / "tiny_model"
REF_SRC = Path(os.environ.get("HY3_REF_SRC", "/tmp/hy3ref_src"))

SEED = 42
IMAGE_SIZE = "256x256"
SYSTEM_PROMPT_NAME = "en_unified"
EDIT_PROMPT = "Put the red circle from the first image onto the striped background of the second image."
EDIT_COT = (
    "<think>The user wants the red circle of image one moved onto the blue and yellow stripes of image two."
    "</think><recaption>A red circle sits in the middle of wide blue and yellow stripes, soft light.</recaption>"
)
T2I_PROMPT = "A small green house under a bright yellow sun."
T2I_COT = (
    "<think>A simple scene: one green house, one yellow sun, clear sky.</think>"
    "<recaption>A small green house stands on grass under a bright yellow sun in a clear blue sky.</recaption>"
)
COT_PROMPT = "Make the sky in the first image purple."
COT_MAX_NEW_TOKENS = 16
STEP_TIMESTEP = 600.0

BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "<|pad|>"
NAMED_SPECIALS = [
    "<boi>", "<eoi>", "<boa>", "<eoa>", "<bov>", "<eov>", "<img>", "<audio>", "<video>", "<cfg>",
    "<timestep>", "<timestep_r>", "<guidance>", "<joint_img_sep>", "<answer>", "</answer>",
    "<think>", "</think>", "<recaption>", "</recaption>", "<ref>", "</ref>", "<quad>", "</quad>",
]
RATIO_TOKENS = [f"<img_ratio_{i}>" for i in range(37)]
SIZE_TOKENS = ["<img_size_256>"]
BPE_MERGES = 1200

TINY_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "attention_head_dim": 16,
    "intermediate_size": 64,
    "moe_intermediate_size": 32,
    "num_experts": 4,
    "moe_topk": 2,
    "num_shared_expert": 1,
    "use_mixed_mlp_moe": True,
    "moe_layer_num_skipped": 0,
    "norm_topk_prob": True,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "use_qk_norm": True,
    "use_rotary_pos_emb": True,
    "rope_theta": 10000.0,
    "rope_scaling": {"type": "custom", "factor": 1.0},
    "rope_type": "2d",
    "max_position_embeddings": 4096,
    "attention_bias": False,
    "mlp_bias": False,
    "norm_type": "hf_rms",
    "tie_word_embeddings": False,
    "moe_impl": "eager",
    "image_base_size": 256,
    "vae_downsample_factor": [16, 16],
    "patch_size": 1,
    "patch_embed_hidden_dim": 32,
    "img_proj_type": "unet",
    "cond_token_attn_type": "full",
    "cond_image_type": "vae_vit",
    "vae_type": "hunyuan-vae-dcae-3d",
    "vae_dtype": "float32",
    "vae_autocast_dtype": "float16",
    "vae": {
        "_class_name": "AutoencoderKLConv3D",
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 8,
        "block_out_channels": [32, 32, 32, 32, 32],
        "layers_per_block": 1,
        "ffactor_spatial": 16,
        "ffactor_temporal": 4,
        "sample_size": 256,
        "sample_tsize": 64,
        "scaling_factor": 0.75,
        "shift_factor": 0.1,
        "downsample_match_channel": True,
        "upsample_match_channel": True,
    },
    "vit_type": "siglip2-so400m-patch16-naflex",
    "vit": {
        "model_type": "siglip2_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_channels": 3,
        "patch_size": 16,
        "num_patches": 36,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu_pytorch_tanh",
        "attention_dropout": 0.0,
        "output_attentions": False,
        "output_hidden_states": False,
        "use_return_dict": True,
        "_attn_implementation": "sdpa",
    },
    "vit_processor": {
        "image_processor_type": "Siglip2ImageProcessorFast",
        "do_resize": True,
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
        "patch_size": 16,
        "max_num_patches": 32,
    },
    "vit_aligner": {"projector_type": "mlp_gelu", "input_dim": 32, "n_embed": 64, "depth": 2},
    "cfg_distilled": False,
    "use_meanflow": False,
}

GENERATION_CONFIG = {
    "diff_infer_steps": 4,
    "diff_guidance_scale": 2.5,
    "flow_shift": 3.0,
    "sequence_template": "instruct",
    "use_system_prompt": SYSTEM_PROMPT_NAME,
    "bot_task": "think_recaption",
    "drop_think": False,
    "do_sample": True,
    "temperature": 0.6,
    "top_k": 1024,
    "top_p": 0.95,
    "max_length": 12800,
    "moe_impl": "eager",
    "disable_compile": True,
}


NOTES = {
    "cfg_layout": (
        "Every image run is a batch of two rows [cond, uncond] of equal length. The uncond row replaces the tokens "
        "of the user prompt and of the CoT texts inside <think>/<recaption> with <cfg>, one for one; the system "
        "prompt, role prefixes, tags and all image blocks (conditioning images included) stay. Both rows see the "
        "same conditioning latents, ViT patches, positions and mask. Guidance: uncond + scale * (cond - uncond)."
    ),
    "scheduler": (
        "sigmas = linspace(1, 0, steps + 1), shifted s*x / (1 + (s - 1)*x) with s = flow_shift; the model gets "
        "t = 1000*sigma; Euler: x += guided * (sigma_next - sigma), in float32."
    ),
    "rng": (
        "Each prepare_model_inputs makes a fresh torch.Generator('cpu').manual_seed(seed). In an image run it is "
        "consumed by the conditioning images' posterior noise (float32, image order, one randn of the latent shape "
        "(1, C, 1, h, w) each) and then by the initial noise (bfloat16 randn (1, C, H/16, W/16)). On CPU a bfloat16 "
        "randn equals the float32 randn of the same generator state rounded to bfloat16, and advances the generator "
        "identically. generate_image(bot_task='img_ratio') first runs a ratio prefill whose own prepare_model_inputs "
        "draws the posterior noise from another fresh generator with the same seed. Nothing else draws."
    ),
    "cpu_patches": [
        "AutoencoderKLConv3D.__init__ allocates torch.empty(0, device='cuda'): wrapped so that call lands on CPU.",
        (
            "The initial noise is drawn in bfloat16; the pipeline's randn_tensor is wrapped to return it as float32 "
            "with the same values (without CUDA autocast the first conv would get bf16 input and f32 weights)."
        ),
        "torch.autocast('cuda') blocks only warn on CPU and do nothing.",
        (
            "The reference environment's torchvision is built for another torch; the driver declares the two op "
            "schemas torchvision's import registers fake kernels for (nms, qnms) before importing it."
        ),
    ],
    "attributes_set_by_generate": (
        "Direct model calls (step.*, cache.step1_full) run after the edit sampling run, because the forward reads "
        "num_image_tokens / num_special_tokens / post_token_len that generate() sets for the current sequence."
    ),
    "stages": {
        "inputs.*": "model.prepare_model_inputs(prompt, [input_a, input_b], cot_text, system prompt en_unified for "
                    "bot_task img_ratio, seed 42, image_size 256x256, mode gen_image) as generate_image calls it; "
                    "mask from _prepare_attention_mask_for_generation; RoPE from build_batch_2d_rope",
        "vit.*": "vision_model + vision_aligner on row 0's ViT patches (one batched call, as the model makes it)",
        "vae.encode.*": "recorded inside that prepare_model_inputs (vae_encode, posterior, noise)",
        "vae.decode.*": "model.vae.decode on a fixed latent",
        "condition.*": "generate_image(..., bot_task img_ratio, return_hidden_states=True): the HY-WU condition",
        "cot.*": "generate_cot(COT prompt, [input_a, input_b], think_recaption, image_size 256x256, greedy, 16 tokens)",
        "sample.*": "generate_image(edit prompt, [input_a, input_b], cot_text, seed 42, 256x256, bot_task img_ratio): "
                    "the pipeline's own sampling loop, recorded through wrappers",
        "step.*": "one direct model call (prepare_inputs_for_generation + forward, first_step=True) on a fixed latent "
                  "and t=600 for the edit sequence, with forward hooks",
        "cache.*": "step 1 of sample.*: the pipeline's cached call vs the same call recomputed from scratch",
        "t2i.*": "as sample.* with no input image; t2i.inputs.* as inputs.*",
    },
    "ln_f": "Image runs never apply model.ln_f (no logits in gen_image mode); it is recorded on the text prefill.",
    "tokenization": (
        "The template tokenizes each section separately (bos is added by the template, not the tokenizer), so "
        "re-encoding the decoded sequence can differ at section borders (e.g. the '\\n\\n' separator is one token)."
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# Importing the reference
# ---------------------------------------------------------------------------------------------------------------


def import_torchvision():
    """Import torchvision even when its compiled ops do not match the installed torch.

    The reference environment links the main environment's torchvision (built for another torch); its import
    then dies registering fake kernels for two ops it never loaded. Declaring those op schemas first lets the
    pure-Python parts (transforms, resize) import; the reference never calls the ops themselves.
    """
    try:
        import torchvision
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_torchvision.lib = lib
        import torchvision  # noqa: F401


def import_reference():
    import_torchvision()
    sys.path.insert(0, str(REF_SRC))
    import transformers
    import wu.models.hy.autoencoder_kl_3d as vae_mod
    import wu.models.hy.hunyuan_image_3_pipeline as pipe_mod
    import wu.models.hy.modeling_hunyuan_image_3 as model_mod
    import wu.models.hy.system_prompt as sysprompt_mod
    import wu.models.hy.tokenization_hunyuan_image_3 as tok_mod
    from wu.models.hy.configuration_hunyuan_image_3 import HunyuanImage3Config

    assert transformers.__version__ == "4.57.1", transformers.__version__
    ref = {"vae": vae_mod, "pipe": pipe_mod, "model": model_mod, "sysprompt": sysprompt_mod, "tok": tok_mod}
    ref["Config"] = HunyuanImage3Config
    return ref


# ---------------------------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------------------------


class Recorder:
    """Named tensors for reference.safetensors plus their manifest entries."""

    def __init__(self):
        self.tensors = {}
        self.entries = {}
        self.rng_events = []
        self.generators = []
        self.active = None

    def generator_label(self, generator):
        """Generators numbered by first use in this run (kept alive so the numbering stays unambiguous)."""
        if generator is None:
            return None
        for i, seen in enumerate(self.generators):
            if seen is generator:
                return f"generator #{i} (torch.Generator cpu, seed {generator.initial_seed()})"
        self.generators.append(generator)
        return self.generator_label(generator)

    def rng_event(self, what, tensor, generator):
        gens = generator if isinstance(generator, list) else [generator]
        self.rng_events.append({
            "what": what,
            "shape": list(tensor.shape),
            "dtype": str(tensor.dtype).replace("torch.", ""),
            "generators": [self.generator_label(g) for g in gens],
            "seeds": [None if g is None else g.initial_seed() for g in gens],
        })

    def put(self, name, tensor, what):
        assert name not in self.tensors, name
        tensor = tensor.detach().cpu()
        note = None
        if tensor.dtype == torch.bool:
            tensor, note = tensor.to(torch.uint8), "bool stored as uint8 (1 = True)"
        elif tensor.dtype == torch.bfloat16:
            tensor, note = tensor.float(), "bfloat16 values stored exactly as float32"
        elif tensor.is_floating_point():
            tensor = tensor.float()
        elif tensor.dtype != torch.uint8:
            tensor = tensor.to(torch.int64)
        self.tensors[name] = tensor.contiguous().clone()
        entry = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", ""), "what": what}
        if note:
            entry["note"] = note
        self.entries[name] = entry

    def put_mask(self, name, mask, what):
        """A boolean attention mask, bit-packed along the last axis (numpy packbits, bitorder little)."""
        mask = mask.detach().cpu().bool()
        packed = np.packbits(mask.numpy(), axis=-1, bitorder="little")
        self.put(name, torch.from_numpy(packed), what)
        self.entries[name]["note"] = (
            f"bit-packed bool mask of shape {list(mask.shape)}: "
            f"np.unpackbits(x, axis=-1, count={mask.shape[-1]}, bitorder='little').astype(bool); True = may attend"
        )
        self.entries[name]["unpacked_shape"] = list(mask.shape)


def log(message):
    print(f"[make_reference] {message}", flush=True)


def as_int_tensor(values):
    return torch.tensor(values, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer: a deterministic byte-level BPE over the texts the template uses
# ---------------------------------------------------------------------------------------------------------------


def bpe_corpus(ref):
    sp = ref["sysprompt"]
    texts = [sp.unified_system_prompt_en, sp.t2i_system_prompt_en_vanilla, sp.t2i_system_prompt_en_recaption]
    texts += [sp.t2i_system_prompt_en_think_recaption, EDIT_PROMPT, EDIT_COT, T2I_PROMPT, T2I_COT, COT_PROMPT]
    texts += ["User: ", "Assistant: ", "\n\n"]
    return texts


def train_bpe(texts, specials, num_merges):
    """Greedy BPE merges over byte-level pieces; ties go to the lexicographically smallest pair."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words = Counter()
    for text in texts:
        for special in specials:
            text = text.replace(special, " ")
        for piece, _ in pre.pre_tokenize_str(text):
            words[tuple(piece)] += 1
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = []
    words = dict(words)
    while len(merges) < num_merges:
        pairs = Counter()
        for word, count in words.items():
            for a, b in itertools.pairwise(word):
                pairs[(a, b)] += count
        if not pairs:
            break
        best_count = max(pairs.values())
        if best_count < 2:
            break
        best = min(pair for pair, count in pairs.items() if count == best_count)
        merges.append(best)
        joined = best[0] + best[1]
        vocab[joined] = len(vocab)
        new_words = {}
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + count
        words = new_words
    return vocab, merges


def build_tokenizer(ref, out_dir):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    specials = [BOS, EOS, PAD] + NAMED_SPECIALS + RATIO_TOKENS + SIZE_TOKENS
    vocab, merges = train_bpe(bpe_corpus(ref), specials, BPE_MERGES)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer = ref["tok"].HunyuanImage3TokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=NAMED_SPECIALS + RATIO_TOKENS + SIZE_TOKENS,
        clean_up_tokenization_spaces=False,
        model_max_length=12800,
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# Patches applied from outside the reference
# ---------------------------------------------------------------------------------------------------------------


def patch_reference(ref, rec):
    """CPU fixes and recording taps, each a thin wrapper around the reference function it names."""
    vae_mod, pipe_mod, model_mod = ref["vae"], ref["pipe"], ref["model"]

    # 1. AutoencoderKLConv3D.__init__ allocates torch.empty(0, device="cuda"): build it with that call on CPU.
    vae_init = vae_mod.AutoencoderKLConv3D.__init__

    @functools.wraps(vae_init)
    def cpu_vae_init(self, *args, **kwargs):
        real_empty = torch.empty

        def empty_on_cpu(*shape, device=None, **kw):
            return real_empty(*shape, **kw)

        torch.empty = empty_on_cpu
        try:
            vae_init(self, *args, **kwargs)
        finally:
            torch.empty = real_empty

    vae_mod.AutoencoderKLConv3D.__init__ = cpu_vae_init

    # 2. The VAE posterior noise: record every draw (the generator is the one prepare_model_inputs seeded).
    vae_randn = vae_mod.randn_tensor

    def recorded_vae_randn(shape, generator=None, device=None, dtype=None, **kw):
        out = vae_randn(shape, generator=generator, device=device, dtype=dtype, **kw)
        rec.rng_event("vae posterior sample (DiagonalGaussianDistribution.sample)", out, generator)
        if rec.active is not None:
            rec.active.setdefault("vae_noise", []).append(out.clone())
        return out

    vae_mod.randn_tensor = recorded_vae_randn

    # 3. The initial noise is drawn in bfloat16 (prepare_latents); on CPU without autocast the first conv would
    #    see bf16 input with f32 weights. Keep the bf16 values, hand them on as float32.
    pipe_randn = pipe_mod.randn_tensor

    def f32_initial_noise(shape, generator=None, device=None, dtype=None, **kw):
        out = pipe_randn(shape, generator=generator, device=device, dtype=dtype, **kw)
        rec.rng_event("initial noise (pipeline prepare_latents)", out, generator)
        if rec.active is not None:
            rec.active["initial_noise_bf16"] = out.clone()
        return out.float()

    pipe_mod.randn_tensor = f32_initial_noise

    # 4. Taps: posterior statistics, encode outputs, scheduler steps, model outputs, VAE decode.
    sample = vae_mod.DiagonalGaussianDistribution.sample

    def recorded_sample(self, generator=None):
        out = sample(self, generator)
        if rec.active is not None:
            rec.active.setdefault("posterior", []).append((self.mean.clone(), self.logvar.clone(), out.clone()))
        return out

    vae_mod.DiagonalGaussianDistribution.sample = recorded_sample

    vae_encode = model_mod.HunyuanImage3ForCausalMM.vae_encode

    def recorded_vae_encode(self, image, cfg_factor=1, generator=None):
        t, latents = vae_encode(self, image, cfg_factor=cfg_factor, generator=generator)
        if rec.active is not None:
            rec.active.setdefault("vae_encode", []).append((image.clone(), latents.clone()))
        return t, latents

    model_mod.HunyuanImage3ForCausalMM.vae_encode = recorded_vae_encode

    step = pipe_mod.FlowMatchDiscreteScheduler.step

    def recorded_step(self, model_output, timestep, sample, *args, **kwargs):
        out = step(self, model_output, timestep, sample, *args, **kwargs)
        if rec.active is not None:
            rec.active.setdefault("steps", []).append({
                "timestep": timestep.clone(), "guided": model_output.clone(), "latents": out[0].clone(),
                "sigma": self.sigmas.clone(), "timesteps": self.timesteps.clone(),
            })
        return out

    pipe_mod.FlowMatchDiscreteScheduler.step = recorded_step

    forward = model_mod.HunyuanImage3ForCausalMM.forward

    @functools.wraps(forward)
    def recorded_forward(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if rec.active is not None:
            call = {"mode": kwargs.get("mode"), "first_step": kwargs.get("first_step")}
            if out.diffusion_prediction is not None:
                call["prediction"] = out.diffusion_prediction.clone()
            if out.logits is not None:
                call["last_logits"] = out.logits[:, -1].clone()
            rec.active.setdefault("forwards", []).append(call)
        return out

    model_mod.HunyuanImage3ForCausalMM.forward = recorded_forward

    decode = vae_mod.AutoencoderKLConv3D.decode

    def recorded_decode(self, z, return_dict=True, generator=None):
        out = decode(self, z, return_dict=return_dict, generator=generator)
        if rec.active is not None:
            sample_out = out[0] if not return_dict else out.sample
            rec.active.setdefault("decode", []).append((z.clone(), sample_out.clone()))
        return out

    vae_mod.AutoencoderKLConv3D.decode = recorded_decode

    generate = model_mod.HunyuanImage3ForCausalMM.generate

    @functools.wraps(generate)
    def recorded_generate(self, *args, **kwargs):
        out = generate(self, *args, **kwargs)
        if rec.active is not None and kwargs.get("mode", "gen_text") == "gen_text":
            call = {"input_ids": kwargs["input_ids"].clone(), "output": out}
            rec.active.setdefault("text_generations", []).append(call)
        return out

    model_mod.HunyuanImage3ForCausalMM.generate = recorded_generate


# ---------------------------------------------------------------------------------------------------------------
# The tiny checkpoint
# ---------------------------------------------------------------------------------------------------------------


def init_value(name, shape, gen):
    """Non-degenerate random values for one parameter: every path, zero-initialised ones included, matters."""
    if name.endswith("weight") and len(shape) == 1:
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if len(shape) <= 1:
        return 0.05 * torch.randn(shape, generator=gen)
    fan_in = math.prod(shape[1:])
    std = min(0.2, max(0.02, 1.0 / math.sqrt(fan_in)))
    return std * torch.randn(shape, generator=gen)


def write_config(ref, out_dir, vocab_size, tokenizer):
    config = ref["Config"](
        vocab_size=vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        architectures=["HunyuanImage3ForCausalMM"],
        torch_dtype="float32",
        **TINY_CONFIG,
    )
    data = config.to_diff_dict()
    for key in inspect.signature(ref["Config"].__init__).parameters:
        if key not in ("self", "kwargs") and hasattr(config, key):
            data[key] = getattr(config, key)
    data["vae_downsample_factor"] = list(data["vae_downsample_factor"])
    (out_dir / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return config


def write_generation_config(out_dir, tokenizer):
    data = dict(GENERATION_CONFIG)
    data.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=[tokenizer.eos_token_id],
                pad_token_id=tokenizer.pad_token_id, transformers_version="4.57.1")
    (out_dir / "generation_config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_weights(ref, config, out_dir):
    from safetensors.torch import save_file

    model = ref["model"].HunyuanImage3ForCausalMM(config)
    names = sorted(model.state_dict())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    del model
    gen = torch.Generator().manual_seed(SEED)
    weights = {k: init_value(k, shapes[k], gen).float().contiguous() for k in names}
    sizes = [weights[k].numel() * 4 for k in names]
    total, half, acc, cut = sum(sizes), sum(sizes) / 2, 0, len(names)
    for i, size in enumerate(sizes):
        acc += size
        if acc >= half:
            cut = i + 1
            break
    shards = [names[:cut], names[cut:]]
    weight_map = {}
    for i, keys in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: weights[k] for k in keys}, str(out_dir / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names


def build_checkpoint(ref, manifest):
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    for old in MODEL_DIR.iterdir():
        old.unlink()
    tokenizer = build_tokenizer(ref, MODEL_DIR)
    config = write_config(ref, MODEL_DIR, len(tokenizer), tokenizer)
    write_generation_config(MODEL_DIR, tokenizer)
    names = write_weights(ref, config, MODEL_DIR)
    manifest["checkpoint"] = {
        "folder": "tiny_model",
        "num_weights": len(names),
        "vocab_size": len(tokenizer),
        "bpe_merges": BPE_MERGES,
        "special_token_ids": {
            t: tokenizer.convert_tokens_to_ids(t) for t in [BOS, EOS, PAD] + NAMED_SPECIALS + RATIO_TOKENS + SIZE_TOKENS
        },
        "weight_init": (
            "torch.Generator().manual_seed(42), parameters in sorted key order: 1-D '*weight' (norms) = 1 + 0.1*randn, "
            "other 1-D (biases) = 0.05*randn, >=2-D = randn * clamp(1/sqrt(fan_in), 0.02, 0.2); float32"
        ),
    }


def load_model(ref):
    model_cls = ref["model"].HunyuanImage3ForCausalMM
    model, info = model_cls.from_pretrained(
        str(MODEL_DIR), torch_dtype=torch.float32, attn_implementation="sdpa", moe_impl="eager",
        output_loading_info=True,
    )
    problems = {k: v for k, v in info.items() if v}
    assert not problems, problems
    model.load_tokenizer(str(MODEL_DIR))
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------


def make_images():
    """Two small RGB images: a red circle on a gradient (320x256) and blue/yellow stripes (256x384)."""
    ys, xs = np.mgrid[0:256, 0:320]
    a = np.stack([xs * 255 // 319, ys, 255 - xs * 255 // 319], axis=-1).astype(np.uint8)
    image_a = Image.fromarray(a, "RGB")
    ImageDraw.Draw(image_a).ellipse((110, 80, 210, 180), fill=(220, 20, 30))
    ys, xs = np.mgrid[0:384, 0:256]
    stripes = ((xs + ys) // 32) % 2 == 0
    b = np.where(stripes[..., None], np.array([30, 60, 200]), np.array([240, 210, 40])).astype(np.uint8)
    image_b = Image.fromarray(b, "RGB")
    ImageDraw.Draw(image_b).rectangle((40, 140, 120, 220), fill=(20, 160, 60))
    paths = [HERE / "input_a.png", HERE / "input_b.png"]
    image_a.save(paths[0])
    image_b.save(paths[1])
    return [str(p) for p in paths]


def system_prompt(ref, bot_task):
    return ref["sysprompt"].get_system_prompt(SYSTEM_PROMPT_NAME, bot_task, None).strip()


def prepare(model, ref, images, prompt, cot_text):
    """prepare_model_inputs exactly as generate_image calls it for the image run (CFG batch [cond, uncond])."""
    return model.prepare_model_inputs(
        prompt=prompt, image=images, cot_text=cot_text, system_prompt=system_prompt(ref, "img_ratio"),
        seed=SEED, image_size=IMAGE_SIZE, mode="gen_image", infer_align_image_size=False,
    )


def rope_info_tensor(rope_image_info):
    rows = [[[s.start, s.stop, h, w] for s, (h, w) in row] for row in rope_image_info]
    return as_int_tensor(rows)


def section_summary(sections):
    out = []
    for section in sections:
        item = {"type": section["type"]}
        if section["type"] == "text":
            item["text"] = section.get("text")
            for key in ("uncond_enabled", "uncond_p", "ignore"):
                if key in section:
                    item[key] = section[key]
        else:
            for key, value in section.items():
                if isinstance(value, (int, float, str, bool, list)) or value is None:
                    item[key] = value
        out.append(item)
    return out


def compress_img_runs(text):
    return re.sub(r"(<img>)+", lambda m: f"<img>x{len(m.group(0)) // 5}", text)


# ---------------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------------


def record_inputs(model, ref, rec, manifest, mi, prefix, what, with_cos_sin=True):
    """Every tensor of a prepare_model_inputs result, plus the mask and 2D RoPE the model derives from it.

    The CFG rows share their positions and mask (asserted), so RoPE cos/sin and the mask keep row 0 only.
    """
    tok = model._tokenizer
    ids = mi["input_ids"]
    rec.put(f"{prefix}.input_ids", ids, f"{what}: token ids, rows [cond, uncond]")
    rec.put(f"{prefix}.position_ids", mi["position_ids"], "position ids (arange per row)")
    for key in ("image_mask", "cond_vae_image_mask", "cond_vit_image_mask"):
        if mi.get(key) is not None:
            rec.put(f"{prefix}.{key}", mi[key], f"{key} (True at the positions of those image tokens)")
    for key in ("timesteps_index", "cond_timesteps_index", "gen_timestep_scatter_index"):
        if mi.get(key) is not None:
            rec.put(f"{prefix}.{key}", mi[key], f"{key}: positions of <timestep> slots")
    if mi.get("cond_timesteps") is not None:
        rec.put(f"{prefix}.cond_timesteps", torch.stack(list(mi["cond_timesteps"])),
                "timesteps of the conditioning images, [row, image] (always 0: clean)")
    if mi.get("cond_vae_images") is not None:
        for r, row in enumerate(mi["cond_vae_images"]):
            for j, latent in enumerate(row):
                rec.put(f"{prefix}.cond_vae_images.row{r}.img{j}", latent,
                        "encoded conditioning latent (after shift/scale), (C, h, w); "
                        "the uncond row repeats the cond row")
    if mi.get("cond_vit_images") is not None:
        vit_rows = mi["cond_vit_images"]
        assert all(torch.equal(row, vit_rows[0]) for row in vit_rows)
        rec.put(f"{prefix}.cond_vit_images", vit_rows[0],
                "ViT pixel patches of row 0, [image, patch, 3*16*16] (patch pixels ordered (dy, dx, channel)); "
                "the reference repeats the same list for the uncond row")
        kw = mi["cond_vit_image_kwargs"]
        rec.put(f"{prefix}.cond_vit_image_kwargs.spatial_shapes", torch.stack(list(kw["spatial_shapes"])),
                "ViT patch grid (h, w) per [row, image]")
        rec.put(f"{prefix}.cond_vit_image_kwargs.attention_mask", torch.stack(list(kw["attention_mask"])),
                "ViT patch validity mask per [row, image, patch] (1 = real patch, 0 = padding)")
    rope_info = mi["rope_image_info"]
    rec.put(f"{prefix}.rope_image_info", rope_info_tensor(rope_info),
            "2D-RoPE image sections per row: [slice start, slice stop, token_h, token_w]")
    length = ids.shape[1]
    cos, sin, all_pos = ref["model"].build_batch_2d_rope(
        seq_len=length, n_elem=model.config.attention_head_dim, image_infos=rope_info,
        base=model.config.rope_theta, return_all_pos=True,
    )
    rec.put(f"{prefix}.rope_pos_yx", torch.stack([p[:, 0] for p in all_pos]), "2D RoPE positions (y, x) per token")
    assert torch.equal(cos[0], cos[-1]) and torch.equal(sin[0], sin[-1])
    if with_cos_sin:
        rec.put(f"{prefix}.rope_cos", cos[:1], "RoPE cos per token of row 0 (head_dim), y/x frequencies interleaved, "
                "applied with rotate_half; row 1 is identical")
        rec.put(f"{prefix}.rope_sin", sin[:1], "RoPE sin per token of row 0; row 1 is identical")
    mask = model._prepare_attention_mask_for_generation(ids, model.generation_config, model_kwargs=mi)
    assert torch.equal(mask[0], mask[-1])
    rec.put_mask(f"{prefix}.attention_mask", mask[:1],
                 f"boolean attention mask as the reference materialises it for the first forward, row 0 of "
                 f"{list(mask.shape)} (the uncond row is identical)")
    out = mi["tokenizer_output"]
    info = {
        "length": length,
        "decoded_cond": tok.decode(ids[0]),
        "decoded_uncond_compressed": compress_img_runs(tok.decode(ids[-1])),
        "decoded_cond_compressed": compress_img_runs(tok.decode(ids[0])),
        "slices": {
            key: [[[s.start, s.stop] for s in row] for row in getattr(out, key)]
            for key in ("text_slices", "vae_image_slices", "gen_image_slices", "vit_image_slices",
                        "joint_image_slices", "all_image_slices")
            if getattr(out, key, None) is not None
        },
    }
    gen_info = mi["batch_gen_image_info"]
    if gen_info and gen_info[0] is not None:
        g = gen_info[0]
        info["gen_image"] = {"height": g.image_height, "width": g.image_width, "token_height": g.token_height,
                             "token_width": g.token_width, "base_size": g.base_size,
                             "ratio_index": int(g.ratio_index)}
        rec.put(f"{prefix}.gen_image_info", as_int_tensor(
            [g.image_height, g.image_width, g.token_height, g.token_width, g.base_size, int(g.ratio_index)]),
            "generated image [height, width, token_h, token_w, base_size, ratio_index]")
    conds = []
    for cond in (mi["batch_cond_images"] or [[]])[0]:
        v, t = cond.vae_image.i, cond.vit_image.i
        conds.append({
            "original_size_wh": [v.ori_image_width, v.ori_image_height],
            "vae": {"height": v.image_height, "width": v.image_width, "token_height": v.token_height,
                    "token_width": v.token_width, "base_size": v.base_size, "ratio_index": int(v.ratio_index)},
            "vit": {"token_height": t.token_height, "token_width": t.token_width, "token_length": t.image_token_length},
        })
    info["cond_images"] = conds
    manifest["sequences"][prefix] = info
    return info


def stage_inputs_vit_vae(model, ref, rec, manifest, images):
    rec.active = {}
    mi = prepare(model, ref, images, EDIT_PROMPT, EDIT_COT)
    taps, rec.active = rec.active, None
    record_inputs(model, ref, rec, manifest, mi, "inputs", "edit image run (prepare_model_inputs, mode gen_image)")
    manifest["sequences"]["inputs"]["sections_cond"] = section_summary(prepare_sections(model, ref, images))

    # b. ViT: one batched call per row, as instantiate_vit_image_tokens makes it.
    pixel = mi["cond_vit_images"][0]
    kw = mi["cond_vit_image_kwargs"]
    shapes, attn = kw["spatial_shapes"][0], kw["attention_mask"][0]
    captured = {}
    hook = model.vision_model.embeddings.register_forward_hook(lambda m, i, o: captured.update(emb=o.clone()))
    with torch.no_grad():
        vout = model.vision_model(pixel, attention_mask=attn, spatial_shapes=shapes)
        aligned = model.vision_aligner(vout.last_hidden_state)
        batched = model._forward_vision_encoder(pixel, spatial_shapes=shapes, attention_mask=attn)
    hook.remove()
    assert torch.equal(aligned, batched)
    rec.put("vit.spatial_shapes", shapes, "patch grid (h, w) per image; the ViT input is inputs.cond_vit_images")
    rec.put("vit.attention_mask", attn, "patch validity per image (1 real, 0 padding)")
    rec.put("vit.embeddings", captured["emb"], "patch embedding + resized position embedding, before the encoder")
    rec.put("vit.last_hidden_state", vout.last_hidden_state, "vision_model output (after post_layernorm)")
    rec.put("vit.pooler_output", vout.pooler_output, "attention-pooling head output (unused by the generator)")
    rec.put("vit.aligner_output", aligned, "vision_aligner output = what is scattered into the <img> slots")

    # c. VAE encode, recorded inside prepare_model_inputs (image order a, b; one generator seeded 42).
    names = ["a", "b"]
    for j, (image, latent) in enumerate(taps["vae_encode"]):
        mean, logvar, sampled = taps["posterior"][j]
        p = f"vae.encode.{names[j]}"
        pixels = torch.round((image + 1) * 127.5).clamp(0, 255).to(torch.uint8)
        assert torch.equal((pixels.float() / 255 - 0.5) / 0.5, image)
        rec.put(f"{p}.image_uint8", pixels, "preprocessed image into vae_encode (LANCZOS resize + center crop to the "
                "bucket), (1, 3, H, W) as uint8; the float32 tensor the reference feeds is exactly "
                "(x.float() / 255 - 0.5) / 0.5 (ToTensor then Normalize(0.5, 0.5); asserted)")
        rec.put(f"{p}.mean", mean, "posterior mean (1, C, 1, h, w); the encoder repeats the frame to T=4")
        rec.put(f"{p}.logvar", logvar, "posterior log-variance after clamp(-30, 20)")
        rec.put(f"{p}.noise", taps["vae_noise"][j], "standard normal draw of the posterior sample (float32)")
        rec.put(f"{p}.sample", sampled, "mean + exp(0.5*logvar) * noise")
        rec.put(f"{p}.latent", latent, "(sample - shift_factor) * scaling_factor, frame axis squeezed")
    return mi


def prepare_sections(model, ref, images):
    out = model.preprocess_inputs(
        prompt=EDIT_PROMPT, image=images, cot_text=EDIT_COT, system_prompt=system_prompt(ref, "img_ratio"),
        mode="gen_image", image_size=IMAGE_SIZE, cfg_factor=2, bot_task="auto",
    )
    return out["sections"][0]


def stage_vae_decode(model, rec):
    gen = torch.Generator().manual_seed(1234)
    channels = model.config.vae["latent_channels"]
    z = torch.randn((1, channels, 1, 16, 16), generator=gen)
    with torch.no_grad():
        image = model.vae.decode(z, return_dict=False)[0]
    rec.put("vae.decode.input", z, "fixed latent (torch.Generator seed 1234 randn), raw VAE space (no shift/scale)")
    rec.put("vae.decode.output", image, "vae.decode(input): (1, 3, 1, 256, 256), last frame of the T=4 decode")


class Hooks:
    """Forward hooks recording tensor inputs / outputs of named modules, call by call."""

    def __init__(self, model, names):
        self.calls, self.handles = [], []
        for name in names:
            module = model.get_submodule(name)
            self.handles.append(module.register_forward_hook(functools.partial(self.record, name), with_kwargs=True))

    def record(self, name, module, args, kwargs, output):
        tensors_in = [a for a in args if isinstance(a, torch.Tensor)]
        if not tensors_in:
            tensors_in = [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
        out = output[0] if isinstance(output, tuple) else output
        self.calls.append((name, [t.clone() for t in tensors_in], out.clone()))

    def remove(self):
        for h in self.handles:
            h.remove()


def manual_forward(model, mi, latent, timestep, first_step):
    """One model call the way the pipeline makes it (prepare_inputs_for_generation, then forward)."""
    mi = dict(mi)
    input_ids = mi.pop("input_ids")
    mi["attention_mask"] = model._prepare_attention_mask_for_generation(
        input_ids, model.generation_config, model_kwargs=mi)
    images = torch.cat([latent] * 2)
    inputs = model.prepare_inputs_for_generation(
        input_ids, images=images, timesteps=torch.full((2,), timestep), **mi)
    with torch.no_grad():
        out = model(**inputs, first_step=first_step)
    return out.diffusion_prediction


def stage_step(model, ref, rec, images):
    mi = prepare(model, ref, images, EDIT_PROMPT, EDIT_COT)
    gen = torch.Generator().manual_seed(7)
    channels = model.config.vae["latent_channels"]
    latent = torch.randn((1, channels, 16, 16), generator=gen)
    names = ["patch_embed", "timestep_emb", "time_embed", "time_embed_2", "final_layer"]
    names += [f"model.layers.{i}" for i in range(model.config.num_hidden_layers)]
    hooks = Hooks(model, names)
    pre = {}
    handle = model.model.register_forward_pre_hook(
        lambda m, a, kw: pre.update(embeds=kw["inputs_embeds"].clone()), with_kwargs=True)
    pred = manual_forward(model, mi, latent, STEP_TIMESTEP, first_step=True)
    handle.remove()
    hooks.remove()
    rec.put("step.latent", latent, "fixed latent (torch.Generator seed 7 randn), fed to both CFG rows")
    rec.put("step.timestep", torch.tensor([STEP_TIMESTEP]), "model timestep t = 1000*sigma, both rows")
    rec.put("step.inputs_embeds", pre["embeds"], "assembled input embeddings entering model (the decoder trunk)")
    roles = {
        "patch_embed": "call0: the generated-image latent of both CFG rows; then one call per conditioning image, "
                       "row by row (row0 img a, row0 img b, row1 img a, row1 img b); inputs (latent, time_embed(t))",
        "time_embed": "call0: t of the generated image (both rows); call1, call2: t=0 of the conditioning images of "
                      "row 0 and row 1 (UNetDown conditioning)",
        "timestep_emb": "call0: t of the generated image -> its <timestep> slot; call1, call2: t=0 of the conditioning "
                        "images of row 0 and row 1 -> their <timestep> slots",
        "time_embed_2": "call0: t of the generated image (UNetUp conditioning)",
        "final_layer": "call0: inputs (hidden states at the generated-image positions, time_embed_2(t)); output = "
                        "the prediction",
        "model.layers.i": "decoder layer outputs (hidden states) over the whole sequence, both rows",
    }
    counts = Counter()
    for name, tensors_in, out in hooks.calls:
        k = counts[name]
        counts[name] += 1
        base = f"step.{name}.call{k}"
        if not name.startswith("model.layers"):
            for i, t in enumerate(tensors_in):
                rec.put(f"{base}.input{i}", t, f"positional tensor input {i} of {name}")
        rec.put(f"{base}.output", out, f"output of {name}" + (" (hidden states)" if "layers" in name else ""))
    rec.put("step.prediction", pred, "diffusion_prediction (2, C, 16, 16): rows [cond, uncond], before CFG")
    return roles


def stage_condition(model, ref, rec, manifest, images):
    rec.active = {}
    captured = {}
    handle = model.model.ln_f.register_forward_hook(
        lambda m, i, o: None if "ln_f" in captured else captured.update(ln_f=(i[0].clone(), o.clone())))
    with torch.no_grad():
        hidden = model.generate_image(
            prompt=EDIT_PROMPT, image=images, seed=SEED, image_size=IMAGE_SIZE, use_system_prompt=SYSTEM_PROMPT_NAME,
            bot_task="img_ratio", infer_align_image_size=False, cot_text=EDIT_COT, return_hidden_states=True,
            verbose=0,
        )
    handle.remove()
    taps, rec.active = rec.active, None
    ids = taps["text_generations"][0]["input_ids"]
    rec.put("condition.input_ids", ids, "img_ratio prefill prompt (gen_text mode, ends <answer><boi><img_size_256>)")
    rec.put("condition.hidden_states", hidden, "hidden_states[0][-1]: last decoder layer prefill output, before ln_f")
    assert torch.equal(captured["ln_f"][0], hidden)
    rec.put("condition.ln_f.output_last64", captured["ln_f"][1][:, -64:], "model.ln_f output during that prefill, last "
            "64 positions (its input is condition.hidden_states)")
    rec.put("condition.last_logits", taps["forwards"][0]["last_logits"], "lm_head logits at the last prefill position")
    manifest["sequences"]["condition"] = {
        "length": ids.shape[1], "decoded_compressed": compress_img_runs(model._tokenizer.decode(ids[0]))}


def stage_cot(model, ref, rec, manifest, images):
    random.seed(SEED)
    rec.rng_events.clear()
    rec.active = {}
    with torch.no_grad():
        cot_text = model.generate_cot(
            prompt=COT_PROMPT, image=images, image_size=IMAGE_SIZE, use_system_prompt=SYSTEM_PROMPT_NAME,
            bot_task="think_recaption", infer_align_image_size=False, max_new_tokens=COT_MAX_NEW_TOKENS,
            do_sample=False, verbose=0,
        )
    taps, rec.active = rec.active, None
    manifest["rng_order_cot"] = list(rec.rng_events)
    gen = taps["text_generations"][0]
    prompt_ids = gen["input_ids"]
    new_ids = gen["output"][:, prompt_ids.shape[1]:]
    rec.put("cot.prompt_ids", prompt_ids, "CoT prompt (gen_text, bot_task think): ends 'Assistant: <think>'")
    rec.put("cot.generated_ids", new_ids, f"greedy new tokens (do_sample=False, max_new_tokens={COT_MAX_NEW_TOKENS})")
    logits = torch.stack([f["last_logits"][0] for f in taps["forwards"]])
    rec.put("cot.step_logits", logits, "lm_head logits of the last position at each generation forward (raw, "
            "before logits processors)")
    for j, noise in enumerate(taps.get("vae_noise", [])):
        rec.put(f"cot.vae_noise.{'ab'[j]}", noise, "posterior noise of the conditioning image in the CoT prompt")
    manifest["cot"] = {
        "prompt": COT_PROMPT, "bot_task": "think_recaption", "image_size": IMAGE_SIZE,
        "max_new_tokens": COT_MAX_NEW_TOKENS, "do_sample": False, "cot_text": cot_text[0], "python_random_seed": SEED,
        "seed_drawn_by_reference": manifest["rng_order_cot"][0]["seeds"][0],
        "decoded_prompt_compressed": compress_img_runs(model._tokenizer.decode(prompt_ids[0])),
        "generation_config_sampling": {
            key: getattr(model.generation_config, key) for key in ("do_sample", "temperature", "top_k", "top_p")
        },
        "note": (
            "generate_cot does not pass `seed` on: prepare_model_inputs draws it with random.randint(0, 10_000_000) "
            "from Python's random (seeded here with random.seed(42) just before the call). The template consumes "
            "that stream first (encode_text calls random.random() for every text section that carries uncond "
            "kwargs), so the drawn seed is not random.Random(42).randint(...); seed_drawn_by_reference is the one "
            "observed. It only feeds the posterior noise of the conditioning images in the CoT prompt "
            "(cot.vae_noise.*). Generation itself is greedy; sampled CoT (do_sample=True with the settings below) "
            "was not recorded."
        ),
    }


def stage_sample(model, ref, rec, manifest, prefix, prompt, images, cot_text, png_name):
    rec.active = {}
    with torch.no_grad():
        _, samples = model.generate_image(
            prompt=prompt, image=images, seed=SEED, image_size=IMAGE_SIZE, use_system_prompt=SYSTEM_PROMPT_NAME,
            bot_task="img_ratio", infer_align_image_size=False, cot_text=cot_text, verbose=0,
        )
    taps, rec.active = rec.active, None
    samples[0].save(HERE / png_name)
    rec.put(f"{prefix}.initial_noise", taps["initial_noise_bf16"],
            "initial noise drawn in bfloat16 by the pipeline (generator = fresh torch.Generator seeded 42, after the "
            "conditioning-image posterior draws), used as float32 with the same values")
    preds = [f for f in taps["forwards"] if f.get("prediction") is not None]
    steps = taps["steps"]
    for i, (call, step) in enumerate(zip(preds, steps)):
        rec.put(f"{prefix}.step{i}.timestep", step["timestep"].reshape(1), "model timestep of this step")
        rec.put(f"{prefix}.step{i}.prediction", call["prediction"], "model output, rows [cond, uncond]")
        rec.put(f"{prefix}.step{i}.guided", step["guided"], "uncond + scale * (cond - uncond)")
        rec.put(f"{prefix}.step{i}.latents", step["latents"], "latents after this Euler step")
    rec.put(f"{prefix}.sigmas", steps[0]["sigma"], "scheduler sigmas (steps + 1), shifted")
    rec.put(f"{prefix}.timesteps", steps[0]["timesteps"], "scheduler timesteps fed to the model (1000 * sigma)")
    rec.put(f"{prefix}.final_latents", steps[-1]["latents"], "latents after the last step")
    z, decoded = taps["decode"][-1]
    rec.put(f"{prefix}.decode_input", z, "latents / scaling_factor + shift_factor, frame axis added")
    rec.put(f"{prefix}.decoded", decoded, "vae.decode output (1, 3, 1, 256, 256) in [-1, 1] (unclamped)")
    text_gen = taps["text_generations"][0]["output"]
    rec.put(f"{prefix}.ratio_prefill_token", text_gen[:, -1], "token generated by the img_ratio prefill (a sliced "
            "vocab index, ignored because the image size is given)")
    manifest["sampling"][prefix] = {
        "prompt": prompt, "cot_text": cot_text, "images": [Path(p).name for p in images] if images else [],
        "seed": SEED, "image_size": IMAGE_SIZE, "system_prompt": SYSTEM_PROMPT_NAME, "png": png_name,
        "first_step_flags": [f["first_step"] for f in preds],
        "guidance_scale": model.generation_config.diff_guidance_scale, "flow_shift": model.generation_config.flow_shift,
        "steps": model.generation_config.diff_infer_steps,
        "sigmas": steps[0]["sigma"].tolist(), "timesteps": steps[0]["timesteps"].tolist(),
    }
    return taps


def stage_cache(model, ref, rec, manifest, images, taps):
    """Step 1 of the edit run: the pipeline's prefix-cached prediction vs a full recompute."""
    preds = [f for f in taps["forwards"] if f.get("prediction") is not None]
    cached = preds[1]["prediction"]
    assert preds[1]["first_step"] is False
    latent = taps["steps"][0]["latents"]
    t1 = taps["steps"][1]["timestep"].item()
    mi = prepare(model, ref, images, EDIT_PROMPT, EDIT_COT)
    full = manual_forward(model, mi, latent, t1, first_step=True)
    rec.put("cache.step1_latent", latent, "sample.step0.latents: input latent of step 1")
    rec.put("cache.step1_timestep", torch.tensor([t1]), "timestep of step 1")
    rec.put("cache.step1_cached", cached, "pipeline step-1 prediction using the prefix K/V cache")
    rec.put("cache.step1_full", full, "same step recomputed from scratch (full sequence, fresh cache)")
    diff = (cached - full).abs().max().item()
    manifest["cache"] = {"max_abs_diff": diff, "max_abs_value": full.abs().max().item()}
    return diff


# ---------------------------------------------------------------------------------------------------------------


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    ref = import_reference()
    rec = Recorder()
    patch_reference(ref, rec)
    manifest = {
        "about": ("Reference tensors for the HunyuanImage-3.0-Instruct port, recorded by make_reference.py while the "
               "public reference (Tencent-Hunyuan/HY-WU, package wu, transformers 4.57.1) ran on CPU in float32 "
               "on the random tiny checkpoint tiny_model/."),
        "inputs": {"images": ["input_a.png", "input_b.png"], "edit_prompt": EDIT_PROMPT, "edit_cot_text": EDIT_COT,
                    "t2i_prompt": T2I_PROMPT, "t2i_cot_text": T2I_COT, "seed": SEED, "image_size": IMAGE_SIZE,
                    "system_prompt": SYSTEM_PROMPT_NAME, "step_timestep": STEP_TIMESTEP},
        "sequences": {}, "sampling": {},
    }
    manifest["notes"] = NOTES
    build_checkpoint(ref, manifest)
    model = load_model(ref)
    log(f"tiny_model ready: {MODEL_DIR}")
    images = make_images()
    manifest["inputs"]["image_sizes_wh"] = [list(Image.open(p).size) for p in images]

    stage_inputs_vit_vae(model, ref, rec, manifest, images)
    log("inputs, ViT, VAE encode")
    stage_vae_decode(model, rec)
    log("VAE decode")
    stage_condition(model, ref, rec, manifest, images)
    log("HY-WU condition hidden states")
    stage_cot(model, ref, rec, manifest, images)
    log("CoT")
    rec.rng_events.clear()
    taps = stage_sample(model, ref, rec, manifest, "sample", EDIT_PROMPT, images, EDIT_COT, "reference_edit.png")
    manifest["rng_order_edit_image_run"] = list(rec.rng_events)
    log("edit sampling")
    # The direct model calls below rely on the per-sequence attributes generate() just set for this sequence.
    manifest["step_hook_calls"] = stage_step(model, ref, rec, images)
    log("one denoising step")
    stage_cache(model, ref, rec, manifest, images, taps)
    log("prefix cache check")
    rec.rng_events.clear()
    stage_sample(model, ref, rec, manifest, "t2i", T2I_PROMPT, None, T2I_COT, "reference_t2i.png")
    manifest["rng_order_t2i_image_run"] = list(rec.rng_events)
    t2i_mi = model.prepare_model_inputs(
        prompt=T2I_PROMPT, image=None, cot_text=T2I_COT, system_prompt=system_prompt(ref, "img_ratio"), seed=SEED,
        image_size=IMAGE_SIZE, mode="gen_image", infer_align_image_size=False)
    record_inputs(model, ref, rec, manifest, t2i_mi, "t2i.inputs", "text-to-image run", with_cos_sin=False)

    from safetensors.torch import save_file

    save_file(dict(sorted(rec.tensors.items())), str(HERE / "reference.safetensors"), metadata={"format": "pt"})
    manifest["tensors"] = dict(sorted(rec.entries.items()))
    manifest["files_sha256"] = {
        p.relative_to(HERE).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(list(MODEL_DIR.iterdir()) + [HERE / "reference.safetensors"])
    }
    (HERE / "reference.json").write_text(json.dumps(manifest, indent=1, sort_keys=False, default=str) + "\n")
    log(f"wrote {HERE / 'reference.safetensors'}")


if __name__ == "__main__":
    main()
