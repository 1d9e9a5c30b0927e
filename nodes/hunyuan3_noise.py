"""HYWUHunyuanImage3Noise: the release's initial noise for a HunyuanImage-3 request (NOISE)."""
from comfy_api.v0_0_2 import io

from hywu_core.comfyui.hunyuan3 import ReferenceNoise, request_of


class HYWUHunyuanImage3Noise(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HYWUHunyuanImage3Noise",
            display_name="HunyuanImage-3 Noise",
            category="HY-WU/HunyuanImage-3",
            description="NOISE for SamplerCustomAdvanced that draws the initial latent exactly as the official "
                        "pipeline does for the conditioning's seed, so the same seed gives the same image. (Any "
                        "other noise, e.g. KSampler's, works too and gives a different image.)",
            inputs=[io.Conditioning.Input("positive", tooltip="the HunyuanImage-3 Conditioning node's positive")],
            outputs=[io.Noise.Output(display_name="noise")],
        )

    @classmethod
    def execute(cls, positive) -> io.NodeOutput:
        return io.NodeOutput(ReferenceNoise(request_of(positive)))
