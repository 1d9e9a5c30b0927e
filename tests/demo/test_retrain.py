"""`./hywu demo-family`: the one command that retrains the demo family (here on its --quick budget)."""
import json

from hywu_core.demo.run import FAMILY_FILES
from hywu_core.encoders import load_condition_encoder
from hywu_core.generator_files import load_generator
from hywu_core.tiny_editor.backbone import load_demo_checkpoint


def test_demo_family_retrains_every_member_into_comfyui_model_folders(hywu, comfy_lib, tmp_path):
    out = tmp_path / "models"
    result = hywu("demo-family", "--quick", "--out", out, "--work", tmp_path / "work")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in FAMILY_FILES:
        assert (out / name).is_file(), name
    family = json.loads((out / "family.json").read_text())
    assert family["recipe"]["generator_steps"] == 3 and family["generator_loss"]["steps"] == 3
    assert family["backbone_pretrain_loss"]["steps"] == 3
    model, _, _ = load_demo_checkpoint(out / "checkpoints" / "hywu_demo.safetensors")
    generator = load_generator(out / "hywu" / "hywu_demo.safetensors")
    generator.spec.verify(model.model.diffusion_model)
    assert generator.config.cond_dim == load_condition_encoder(out / "hywu_encoders" / "hywu_demo").width
