"""The pack's socket types (docs/design.md, "Data flow"), and ComfyUI's LORA_MODEL (a LoRA state dict in
comfy.lora's key format, what the stock "Load LoRA Model" / "Save LoRA Weights" nodes take)."""
from comfy_api.v0_0_2 import io

HYWUEncoder = io.Custom("HYWU_ENCODER")
HYWUCondition = io.Custom("HYWU_CONDITION")
HYWUGenerator = io.Custom("HYWU_GENERATOR")
HYWULoRA = io.Custom("HYWU_LORA")
LoraModel = io.Custom("LORA_MODEL")
Hunyuan3Encoder = io.Custom("HUNYUAN3_ENCODER")
