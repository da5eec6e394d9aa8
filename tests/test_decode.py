"""ControlNeXtDecode: fixed-size temporal chunks, OOM retry with smaller chunks, progress and interruption."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import pytest
import torch

from conftest import pack_import, run_graph
from tiny_pack.tiny_vae_clip import tiny_svd_vae

decode = pack_import("controlnext.decode")


@pytest.fixture(scope="module")
def vae():
    return tiny_svd_vae(seed=2)


def latents(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, 4, 4, 4, generator=torch.Generator().manual_seed(seed))  # 32x32 px: cheap


def clip_decode(vae, z: torch.Tensor) -> torch.Tensor:
    """One call of the temporal decoder on z as a clip, then the official (x/2+0.5).clamp(0,1), as IMAGE."""
    with torch.no_grad():
        x = vae.first_stage_model.decoder(z)
    return (x / 2 + 0.5).clamp(0, 1).movedim(1, -1)


def test_chunks_are_separate_clip_decodes(vae):
    z = latents(5)
    got = decode.decode_in_chunks(vae, z, 2)
    want = torch.cat([clip_decode(vae, z[0:2]), clip_decode(vae, z[2:4]), clip_decode(vae, z[4:5])])
    assert got.shape == (5, 32, 32, 3) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_chunk_size_changes_the_pixels(vae):
    z = latents(4, seed=1)
    in_twos = decode.decode_in_chunks(vae, z, 2)
    at_once = decode.decode_in_chunks(vae, z, 4)
    torch.testing.assert_close(at_once, clip_decode(vae, z), rtol=0, atol=1e-6)
    assert (in_twos - at_once).abs().max() > 1e-3  # the temporal decoder mixes frames inside a call
    # frame-by-frame is yet another result, and a chunk larger than the video is one call
    assert (decode.decode_in_chunks(vae, z, 1) - in_twos).abs().max() > 1e-3
    assert torch.equal(decode.decode_in_chunks(vae, z, 16), at_once)


class OOMOnceForMultiFrameChunks:
    """A forward pre-hook that raises ComfyUI's real OOM exception class the first time a chunk has > 1 frame."""

    def __init__(self) -> None:
        self.raised = 0
        self.calls: list[int] = []

    def __call__(self, module, args):
        frames = args[0].shape[0]
        self.calls.append(frames)
        if frames > 1 and self.raised == 0:
            self.raised += 1
            raise mm.OOM_EXCEPTION("CUDA out of memory. Tried to allocate 2.00 GiB (raised by the test hook)")


def test_a_chunk_that_runs_out_of_memory_is_retried_smaller(vae, caplog):
    z = latents(5, seed=3)
    hook = OOMOnceForMultiFrameChunks()
    handle = vae.first_stage_model.decoder.register_forward_pre_hook(hook)
    try:
        with caplog.at_level(logging.WARNING):
            got = decode.decode_in_chunks(vae, z, 4)
    finally:
        handle.remove()
    assert hook.raised == 1
    assert hook.calls == [4, 2, 2, 1]  # 4 fails, then 2-frame chunks on the same grid
    want = torch.cat([clip_decode(vae, z[0:2]), clip_decode(vae, z[2:4]), clip_decode(vae, z[4:5])])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert any("ran out of memory" in r.getMessage() and "2-frame" in r.getMessage() for r in caplog.records)


def test_out_of_memory_on_a_single_frame_is_raised(vae):
    def always(module, args):
        raise mm.OOM_EXCEPTION("CUDA out of memory (raised by the test hook)")

    handle = vae.first_stage_model.decoder.register_forward_pre_hook(always)
    try:
        with pytest.raises(mm.OOM_EXCEPTION):
            decode.decode_in_chunks(vae, latents(3), 2)
    finally:
        handle.remove()


class NewestIsOOM:
    """comfy.model_management.is_oom of the newest ComfyUI (0.38.1, comfy/model_management.py: OOM_EXCEPTION,
    ACCELERATOR_ERROR, is_oom, raise_non_oom), which 0.3.75 lacks: an error is an out-of-memory error if it is an
    OOM_EXCEPTION (torch.cuda.OutOfMemoryError), or a torch.AcceleratorError whose error_code is 2
    (cudaErrorMemoryAllocation) or whose message says "out of memory"; for the latter, core first calls
    discard_cuda_async_error() to clear the sticky CUDA error. That function runs a tiny kernel and synchronises the
    GPU, which this CPU-only host cannot do, so here it only counts the calls."""

    def __init__(self) -> None:
        self.discarded = 0

    def is_oom(self, e: BaseException) -> bool:
        if isinstance(e, mm.OOM_EXCEPTION):
            return True
        accelerator_error = getattr(torch, "AcceleratorError", RuntimeError)
        if isinstance(e, accelerator_error) and (getattr(e, "error_code", None) == 2
                                                 or "out of memory" in str(e).lower()):
            self.discarded += 1
            return True
        return False

    def raise_non_oom(self, e: BaseException) -> None:
        if not self.is_oom(e):
            raise e


@pytest.fixture
def newest_is_oom(monkeypatch):
    newest = NewestIsOOM()
    monkeypatch.setattr(mm, "is_oom", newest.is_oom, raising=False)
    monkeypatch.setattr(mm, "raise_non_oom", newest.raise_non_oom, raising=False)
    return newest


def accelerator_oom(message: str, error_code: int | None = None) -> BaseException:
    """The error a CUDA/ROCm allocation failure raises outside the caching allocator (cuBLAS/cuDNN workspaces, an
    asynchronous kernel error): torch.AcceleratorError, not torch.cuda.OutOfMemoryError."""
    error = torch.AcceleratorError(message)
    if error_code is not None:
        error.error_code = error_code
    return error


class RaiseOnceForMultiFrameChunks:
    """A forward pre-hook that raises a given error the first time a chunk has > 1 frame."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls: list[int] = []

    def __call__(self, module, args):
        frames = args[0].shape[0]
        self.calls.append(frames)
        if frames > 1 and len(self.calls) == 1:
            raise self.error


@pytest.mark.parametrize("error", [accelerator_oom("CUDA error: out of memory (raised by the test hook)"),
                                   accelerator_oom("CUDA error: cudaErrorMemoryAllocation", error_code=2)],
                         ids=["message", "error_code"])
def test_an_accelerator_out_of_memory_error_is_retried_smaller_where_core_has_is_oom(vae, newest_is_oom, error):
    z = latents(5, seed=4)
    hook = RaiseOnceForMultiFrameChunks(error)
    handle = vae.first_stage_model.decoder.register_forward_pre_hook(hook)
    try:
        got = decode.decode_in_chunks(vae, z, 4)
    finally:
        handle.remove()
    assert hook.calls == [4, 2, 2, 1]
    assert newest_is_oom.discarded == 1  # core's is_oom saw the error (and would clear the sticky CUDA error)
    want = torch.cat([clip_decode(vae, z[0:2]), clip_decode(vae, z[2:4]), clip_decode(vae, z[4:5])])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("with_newest_is_oom", [False, True], ids=["0.3.75", "newest"])
@pytest.mark.parametrize("error", [accelerator_oom("CUDA error: an illegal memory access was encountered"),
                                   ValueError("not a memory problem")], ids=["accelerator", "value"])
def test_other_errors_propagate_unchanged(vae, request, with_newest_is_oom, error):
    if with_newest_is_oom:
        request.getfixturevalue("newest_is_oom")
    hook = RaiseOnceForMultiFrameChunks(error)
    handle = vae.first_stage_model.decoder.register_forward_pre_hook(hook)
    try:
        with pytest.raises(type(error)) as raised:
            decode.decode_in_chunks(vae, latents(3), 2)
    finally:
        handle.remove()
    assert raised.value is error and hook.calls == [2]  # the same exception object, not retried


def test_without_core_is_oom_only_oom_exception_is_retried(vae, monkeypatch):
    monkeypatch.delattr(mm, "is_oom", raising=False)  # 0.3.75: no is_oom, only OOM_EXCEPTION
    error = accelerator_oom("CUDA error: out of memory")
    hook = RaiseOnceForMultiFrameChunks(error)
    handle = vae.first_stage_model.decoder.register_forward_pre_hook(hook)
    try:
        with pytest.raises(torch.AcceleratorError) as raised:
            decode.decode_in_chunks(vae, latents(3), 2)
    finally:
        handle.remove()
    assert raised.value is error


def test_progress_is_reported_per_chunk_and_interrupts_stop_between_chunks(vae):
    seen: list[tuple[int, int]] = []
    decode.decode_in_chunks(vae, latents(5), 2, on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]

    seen.clear()

    def interrupt_after_first(done: int, total: int) -> None:
        seen.append((done, total))
        mm.interrupt_current_processing(True)

    try:
        with pytest.raises(mm.InterruptProcessingException):
            decode.decode_in_chunks(vae, latents(5), 2, on_progress=interrupt_after_first)
    finally:
        mm.interrupt_current_processing(False)
    assert seen == [(2, 5)]


def test_bad_latents_are_refused(vae):
    with pytest.raises(ValueError, match=r"\[frames, 4, h, w\]"):
        decode.decode_in_chunks(vae, torch.zeros(1, 4, 3, 8, 8), 2)
    with pytest.raises(ValueError, match="at least 1"):
        decode.decode_in_chunks(vae, latents(2), 0)
    with pytest.raises(ValueError, match="0 frames"):
        decode.decode_in_chunks(vae, torch.zeros(0, 4, 8, 8), 2)


def test_decode_node_in_a_graph():
    graph = {
        "vae": {"class_type": "ControlNeXtTestTinyVAE", "inputs": {"seed": 2}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 3}},
        "dec": {"class_type": "ControlNeXtDecode", "inputs": {"vae": ["vae", 0], "samples": ["lat", 0],
                                                              "decode_chunk_size": 2}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}},
    }
    run = run_graph(graph)
    assert run.success, run.error()
    assert len(run.outputs["out"]["images"]) == 3
