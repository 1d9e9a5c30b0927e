"""The pack's socket types (DESIGN §2): the generator, conditions and generated LoRAs."""
from comfy_api.latest import io

HYWUGenerator = io.Custom("HYWU_GENERATOR")
