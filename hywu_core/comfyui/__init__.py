"""The ComfyUI adapter: the only part of hywu_core that imports comfy (always inside functions).

    library     `comfy` imported as a library, its device fixed before the first import
    lora_patch  generated LoRAs on a ModelPatcher: merge (weight patches) or dynamic (per row) (§3.2)
    fingerprint a hash of a MODEL's weights as a consumer loads them, to show that no LoRA leaked
"""
