"""The pack's ComfyUI nodes (V3 schema). Thin: parse inputs, call hywu_core, return outputs."""
from hywu_core.tools.example_inputs import install_example_inputs

from . import model_folders
from .apply_lora import HYWUApplyLoRA
from .demo_checkpoint_loader import HYWUDemoCheckpointLoader
from .encode_condition import HYWUEncodeCondition
from .export_lora import HYWULoRAToLoraModel, HYWUSaveLoRA, HYWUSaveOfficialLoRA
from .generate_lora import HYWUGenerateLoRA
from .hunyuan3_condition import HYWUHunyuanImage3Condition
from .hunyuan3_conditioning import HYWUHunyuanImage3Conditioning
from .hunyuan3_cot import HYWUHunyuanImage3CoT
from .hunyuan3_loader import HYWUHunyuanImage3Loader
from .hunyuan3_noise import HYWUHunyuanImage3Noise
from .load_condition_encoder import HYWULoadConditionEncoder
from .load_generator import HYWULoadGenerator
from .lora_tools import HYWUAverageLoRA, HYWUBlendLoRA, HYWUBoundLoRA, HYWUShuffleLoRA
from .model_fingerprint import HYWUModelFingerprint
from .save_condition import HYWUSaveCondition

model_folders.register()
install_example_inputs()     # the images the example workflows load, so that any template can run

NODES = [
    HYWULoadConditionEncoder, HYWUEncodeCondition, HYWULoadGenerator, HYWUGenerateLoRA, HYWUApplyLoRA,
    HYWULoRAToLoraModel, HYWUSaveLoRA, HYWUAverageLoRA, HYWUShuffleLoRA, HYWUBlendLoRA, HYWUBoundLoRA,
    HYWUDemoCheckpointLoader, HYWUModelFingerprint,
    HYWUHunyuanImage3Loader, HYWUHunyuanImage3CoT, HYWUHunyuanImage3Conditioning, HYWUHunyuanImage3Noise,
    HYWUHunyuanImage3Condition, HYWUSaveCondition, HYWUSaveOfficialLoRA,
]
