"""Shared by the HunyuanImage-3 tests: where the reference data lives, and the reference's own prepared edit
inputs as our StepInputs (so a test can check the model without going through our prompt builder)."""
import json
from pathlib import Path

import numpy as np
import torch

from hywu_core.hunyuan3.inputs import StepInputs

DATA = Path(__file__).resolve().parents[1] / "data" / "hunyuan3"
MANIFEST = json.loads((DATA / "reference.json").read_text())


def unpack_mask(reference, name, length):
    """A bit-packed boolean mask of the reference file (see its manifest note) as a bool tensor."""
    bits = np.unpackbits(reference[name].numpy().astype(np.uint8), axis=-1, count=length, bitorder="little")
    return torch.from_numpy(bits.astype(bool))


def _slots(mask):
    return torch.stack([row.nonzero().flatten() for row in mask.bool()])


def reference_step_inputs(reference, keys=()):
    """The reference's prepared edit (rows [cond, uncond]) as StepInputs."""
    ids = reference["inputs.input_ids"]
    b, length = ids.shape
    n_images = reference["inputs.cond_timesteps_index"].shape[1]
    latents = tuple(torch.stack([reference[f"inputs.cond_vae_images.row{r}.img{i}"] for r in range(b)])
                    for i in range(n_images))
    vit = reference["vit.aligner_output"].reshape(1, -1, reference["vit.aligner_output"].shape[-1]).expand(b, -1, -1)
    info = reference["inputs.gen_image_info"].tolist()
    return StepInputs(
        input_ids=ids, attention_mask=unpack_mask(reference, "inputs.attention_mask", length).expand(b, -1, -1, -1),
        positions=reference["inputs.rope_pos_yx"], cond_latents=latents,
        cond_image_slots=_slots(reference["inputs.cond_vae_image_mask"]),
        cond_timestep_slots=reference["inputs.cond_timesteps_index"], vit_embeds=vit,
        vit_slots=_slots(reference["inputs.cond_vit_image_mask"]), image_slots=_slots(reference["inputs.image_mask"]),
        timestep_slot=reference["inputs.timesteps_index"], image_grid=(info[2], info[3]), keys=keys)
