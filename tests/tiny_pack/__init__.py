"""Test-only ComfyUI nodes that emit tiny SVD models and conditioning (never part of the shipped pack)."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .tiny_svd import register_tiny_svd_detection, tiny_svd_conditioning, tiny_svd_patcher
from .tiny_vae_clip_nodes import ControlNeXtTestTinyCLIPVision, ControlNeXtTestTinyVAE

register_tiny_svd_detection()  # ComfyUI's loaders recognise the tiny SVD UNet files (see TinySVDImg2Vid)


class ControlNeXtTestTinySVD(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtTestTinySVD",
            category="ControlNeXt-SVD/testing",
            description="Test only: a tiny random SVD-architecture MODEL.",
            inputs=[io.Int.Input("seed", default=0, tooltip="seed of the weight initialisation")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(tiny_svd_patcher(seed))


class ControlNeXtTestTinySVDConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtTestTinySVDConditioning",
            category="ControlNeXt-SVD/testing",
            description="Test only: native SVD conditioning with a random 64-wide image embedding.",
            inputs=[
                io.Int.Input("frames", default=4, tooltip="video frames"),
                io.Int.Input("width", default=64, tooltip="pixels"),
                io.Int.Input("height", default=64, tooltip="pixels"),
                io.Int.Input("seed", default=0, tooltip="seed of the random embedding and latent"),
            ],
            outputs=[io.Conditioning.Output("positive"), io.Conditioning.Output("negative"),
                     io.Latent.Output("latent")],
        )

    @classmethod
    def execute(cls, frames: int, width: int, height: int, seed: int) -> io.NodeOutput:
        return io.NodeOutput(*tiny_svd_conditioning(frames, height, width, seed=seed))


class TestNodes(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ControlNeXtTestTinySVD, ControlNeXtTestTinySVDConditioning,
                ControlNeXtTestTinyCLIPVision, ControlNeXtTestTinyVAE]


async def comfy_entrypoint() -> TestNodes:
    return TestNodes()
