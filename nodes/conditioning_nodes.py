"""ControlNeXtSVDConditioning and ControlNeXtDecode: the official image conditioning and chunked video decode."""

from __future__ import annotations

import comfy.utils
from comfy_api.v0_0_2 import io

from ..controlnext.conditioning import controlnext_svd_conditioning
from ..controlnext.decode import decode_in_chunks


class ControlNeXtSVDConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtSVDConditioning",
            display_name="ControlNeXt SVD Conditioning",
            category="ControlNeXt-SVD",
            description=(
                "The reference image conditioning exactly as official ControlNeXt-SVD-v2 computes it, in ComfyUI's "
                "native SVD conditioning format (works with native SVD nodes and samplers). The image is fitted to "
                "width x height like the official preprocessing (cover-resize, centre crop); CLIP sees the whole "
                "image squashed to 224x224 (no crop); the VAE latent gets the augmentation noise in [-1,1] pixel "
                "space; the time ids are (fps-1, motion_bucket_id, time_id_augmentation), the last one independent "
                "of the pixel noise as in the official pipeline. Defaults give the official [6, 128, 0.02]."
            ),
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="SVD's CLIP vision encoder (ViT-H/14), e.g. from "
                                    "Image Only Checkpoint Loader or Load CLIP Vision."),
                io.Vae.Input("vae", tooltip="SVD's video VAE (temporal decoder), e.g. from Image Only Checkpoint "
                             "Loader."),
                io.Image.Input("image", tooltip="The reference image (the person to animate). Only the first image of "
                               "a batch is used. It is fitted to width x height: resized to cover, centre cropped."),
                io.Int.Input("width", default=576, min=64, max=8192, step=64,
                             tooltip="Video width in pixels; a multiple of 64 (official: 576)."),
                io.Int.Input("height", default=1024, min=64, max=8192, step=64,
                             tooltip="Video height in pixels; a multiple of 64 (official: 1024)."),
                io.Int.Input("video_frames", default=25, min=1, max=4096,
                             tooltip="Frames of the empty latent: the number of pose frames, reference pose "
                             "included."),
                io.Int.Input("fps", default=7, min=1, max=1024,
                             tooltip="Frame-rate time id; the model sees fps-1 (official: 7, i.e. id 6)."),
                io.Int.Input("motion_bucket_id", default=128, min=0, max=1023,
                             tooltip="Motion time id (official inference: 128; training used 127)."),
                io.Float.Input("augmentation", default=0.02, min=0.0, max=10.0, step=0.001,
                               tooltip="Noise added to the reference before VAE encoding, as a std in [-1,1] pixel "
                               "space (official 0.02; ComfyUI's native node uses [0,1] space, twice as strong). "
                               "The time id is set separately (time_id_augmentation)."),
                io.Int.Input("noise_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, optional=True,
                             tooltip="Seed of the augmentation noise (drawn on the CPU, so it is the same on any "
                             "device)."),
                # last and optional: workflows saved before it existed keep their widget values in place
                io.Float.Input("time_id_augmentation", default=0.02, min=0.0, max=10.0, step=0.001, optional=True,
                               tooltip="The augmentation time id the model is told (official: always 0.02, whatever "
                               "pixel noise was added; the model was trained with it)."),
            ],
            outputs=[
                # display_name too: the UI shows only display_name or the type, never the id
                io.Conditioning.Output("positive", display_name="positive",
                                       tooltip="CLIP image embedding + reference latent + time ids."),
                io.Conditioning.Output("negative", display_name="negative",
                                       tooltip="Zero embedding and zero latent, same time ids (the official "
                                       "unconditional input)."),
                io.Latent.Output("latent", display_name="latent",
                                 tooltip="Empty video latent [video_frames, 4, height/8, width/8]."),
            ],
        )

    @classmethod
    def execute(cls, clip_vision, vae, image, width: int, height: int, video_frames: int, fps: int = 7,
                motion_bucket_id: int = 128, augmentation: float = 0.02, noise_seed: int = 0,
                time_id_augmentation: float = 0.02) -> io.NodeOutput:
        result = controlnext_svd_conditioning(clip_vision, vae, image, width, height, video_frames, fps=fps,
                                              motion_bucket_id=motion_bucket_id, augmentation=augmentation,
                                              noise_seed=noise_seed, time_id_augmentation=time_id_augmentation)
        return io.NodeOutput(result.positive, result.negative, result.latent)


class ControlNeXtDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtDecode",
            display_name="ControlNeXt Decode (chunked)",
            category="ControlNeXt-SVD",
            description=(
                "Decodes SVD video latents in fixed chunks of frames, as the official pipeline does (2 frames). "
                "SVD's temporal decoder blends frames only inside one decode call, so the chunk size changes the "
                "result; ComfyUI's VAE Decode picks its chunk size from free memory instead. A chunk that runs "
                "out of memory is retried smaller. All frames are returned, the reference frame 0 included."
            ),
            inputs=[
                io.Vae.Input("vae", tooltip="SVD's video VAE (the same one the conditioning used)."),
                io.Latent.Input("samples", tooltip="The sampled video latent."),
                io.Int.Input("decode_chunk_size", default=2, min=1, max=4096,
                             tooltip="Frames per decode call (official: 2). Larger blends more frames together "
                             "and needs more memory."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The decoded frames [F,H,W,3].")],
        )

    @classmethod
    def execute(cls, vae, samples, decode_chunk_size: int = 2) -> io.NodeOutput:
        latents = samples["samples"]
        progress = comfy.utils.ProgressBar(latents.shape[0])
        images = decode_in_chunks(vae, latents, decode_chunk_size,
                                  on_progress=lambda done, total: progress.update_absolute(done, total))
        return io.NodeOutput(images)
