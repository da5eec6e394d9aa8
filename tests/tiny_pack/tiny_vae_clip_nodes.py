"""Test-only nodes emitting the tiny CLIP_VISION and SVD VAE of tiny_vae_clip (never part of the shipped pack)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from .tiny_vae_clip import tiny_clip_vision, tiny_svd_vae


class ControlNeXtTestTinyCLIPVision(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtTestTinyCLIPVision",
            category="ControlNeXt-SVD/testing",
            description="Test only: a tiny seeded CLIP_VISION (64-wide embeddings).",
            inputs=[io.Int.Input("seed", default=0, tooltip="seed of the weight initialisation")],
            outputs=[io.ClipVision.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(tiny_clip_vision(seed))


class ControlNeXtTestTinyVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtTestTinyVAE",
            category="ControlNeXt-SVD/testing",
            description="Test only: a tiny seeded SVD video VAE (temporal decoder).",
            inputs=[io.Int.Input("seed", default=0, tooltip="seed of the weight initialisation")],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(tiny_svd_vae(seed))
