"""The diffusers -> ComfyUI key conversion on all 1428 keys of the real SVD-XT UNet (names and shapes from the spec),
the architecture inferred from them, and the weight-kind detection other loaders use."""

from __future__ import annotations

from pathlib import Path

import comfy.model_detection
import comfy.supported_models
import pytest
import torch

from conftest import pack_import

SPEC = Path(__file__).resolve().parent / "data"  # copies of the project spec's key lists


def _keymap() -> list[tuple[str, str, tuple[int, ...]]]:
    rows = []
    for line in (SPEC / "svd-unet-keymap.tsv").read_text().splitlines():
        if line.startswith("#"):
            continue
        diffusers_key, comfy_key, shape = line.split("\t")
        rows.append((diffusers_key, comfy_key, tuple(int(x) for x in shape.strip("[]").split(","))))
    return rows


@pytest.fixture(scope="module")
def keymap():
    rows = _keymap()
    assert len(rows) == 1428
    return rows


def _meta_sd(rows, column: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """Shape-only tensors (no memory): detection and conversion read keys and shapes only."""
    return {prefix + row[column]: torch.empty(row[2], device="meta") for row in rows}


def test_all_1428_real_keys_convert_exactly(keymap):
    mapping, unknown = pack_import("controlnext.unet_keys").diffusers_to_comfy_keys([r[0] for r in keymap])
    assert unknown == []
    wrong = [(d, mapping.get(d), c) for d, c, _ in keymap if mapping.get(d) != c]
    assert wrong == []
    assert len(set(mapping.values())) == 1428


def test_converted_state_dict_keeps_tensors_and_shapes(keymap):
    loader = pack_import("controlnext.unet_loader")
    sd = _meta_sd(keymap, 0)
    converted, kind = loader.to_comfy_unet_state_dict(sd, "unet.bin")
    assert kind.name == "SVD_UNET_DIFFUSERS"
    for d, c, shape in keymap:
        assert converted[c] is sd[d]  # renamed, not copied
        assert tuple(converted[c].shape) == shape


@pytest.mark.parametrize(("column", "prefix"), [(0, ""), (1, ""), (1, "model.diffusion_model.")])
def test_full_size_config_is_comfyuis_svd_config(keymap, column, prefix):
    loader = pack_import("controlnext.unet_loader")
    converted, _ = loader.to_comfy_unet_state_dict(_meta_sd(keymap, column, prefix), "unet")
    inferred = comfy.supported_models.SVD_img2vid(loader.infer_unet_config(converted, "unet")).unet_config
    # what ComfyUI's own UNETLoader detects for the ComfyUI-key file
    native = comfy.model_detection.model_config_from_unet(_meta_sd(keymap, 1, "model.diffusion_model."),
                                                          "model.diffusion_model.")
    assert type(native) is comfy.supported_models.SVD_img2vid
    assert inferred == native.unet_config
    assert inferred["channel_mult"] == [1, 2, 4, 4] and inferred["context_dim"] == 1024


def test_full_size_comfy_unet_has_exactly_these_tensors(keymap):
    """The loader's expected key set (plain torch layers on the meta device) is exactly the 1428 converted
    names/shapes, and exactly what ComfyUI's own full SVD UNet (built on the meta device) holds."""
    loader = pack_import("controlnext.unet_loader")
    converted, kind = loader.to_comfy_unet_state_dict(_meta_sd(keymap, 0), "unet.bin")
    unet_config = loader.infer_unet_config(converted, "unet.bin")
    expected = loader.expected_unet_tensors(unet_config)
    native = comfy.supported_models.SVD_img2vid(unet_config).get_model({}, device=torch.device("meta"))
    assert {k: tuple(v.shape) for k, v in expected.items()} == \
        {k: tuple(v.shape) for k, v in native.diffusion_model.state_dict().items()}
    loader._check_coverage(expected, converted, "unet.bin", kind)  # raises on any mismatch
    del converted["out.2.bias"]
    with pytest.raises(loader.UNetLoadError, match=r"1 of the UNet's 1428 tensors are missing \(out\.2\.bias\)"):
        loader._check_coverage(expected, converted, "unet.bin", kind)


def test_identify_weights(keymap):
    detect = pack_import("controlnext.detect")
    kind = detect.WeightKind
    control = {line.split(" ", 1)[0]: None for line in (SPEC / "controlnext-keys.txt").read_text().splitlines()}
    assert len(control) == 52
    assert detect.identify_weights(control) is kind.CONTROLNEXT_V2
    assert detect.identify_weights(dict(control, scale=None)) is kind.CONTROLNEXT_V1
    v1_mid = dict(control, **{"mid_convs.1.weight": torch.empty(1280, 256, 1, 1, device="meta")})
    assert detect.identify_weights(v1_mid) is kind.CONTROLNEXT_V1
    assert detect.identify_weights(_meta_sd(keymap, 0)) is kind.SVD_UNET_DIFFUSERS
    assert detect.identify_weights(_meta_sd(keymap, 1)) is kind.SVD_UNET_COMFY
    prefixed = _meta_sd(keymap, 1, "model.diffusion_model.")
    assert detect.identify_weights(prefixed) is kind.SVD_UNET_COMFY
    full = dict(prefixed, **{"first_stage_model.decoder.conv_in.weight": None})
    assert detect.identify_weights(full) is kind.SVD_FULL_CHECKPOINT
    spatial_only = {k: v for k, v in _meta_sd(keymap, 0).items() if "temporal" not in k}
    assert detect.identify_weights(spatial_only) is kind.OTHER_UNET
    assert detect.identify_weights({}) is kind.EMPTY
    assert detect.identify_weights({"encoder.conv_in.weight": None}) is kind.UNKNOWN
    for k in kind:
        assert detect.describe_weights(k).startswith(("a ", "an ", "none "))
    assert detect.describe_weights(kind.CONTROLNEXT_V2) == "a ControlNeXt-SVD v2 control network"


def test_benchmark_svd_xt_config_is_the_detected_one(keymap):
    """bench/bench_controlnext_step.py writes the SVD-XT config out; it must be what ComfyUI detects from the keys."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_controlnext_step",
                                                  Path(__file__).resolve().parents[1] / "bench" /
                                                  "bench_controlnext_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # module level only defines constants and functions
    native = comfy.model_detection.model_config_from_unet(_meta_sd(keymap, 1, "model.diffusion_model."),
                                                          "model.diffusion_model.")
    assert comfy.supported_models.SVD_img2vid(dict(bench.SVD_XT_UNET_CONFIG)).unet_config == native.unet_config
