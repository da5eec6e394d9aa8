"""Fake DWPose model files with the real I/O, whose outputs encode known boxes and marker-following keypoints.

ONNX (onnx.helper, opset 18):
- blob_det: YOLOX-shaped [1,3,640,640] -> [1,8400,85]; one person = the box of the letterbox pixels whose brightest
  channel is > 200 (the 114 padding is invisible), score 0.9, none on an image without bright pixels.
- const_det: fixed letterbox boxes with scores (plus "+0*mean(input)" so the input is still checked).
- marker_pose: [N,3,384,288] -> simcc_x [N,133,576], simcc_y [N,133,768]; keypoint k follows the brightest spot of
  colour channel CHANNELS[k] (un-normalised by the real mean/std: a BGR feed or a wrong mean follows the wrong
  marker) with peak gain GAINS[k]. batch "1" (static) or "batch" (symbolic).
TorchScript (torch.jit.trace, one dummy parameter): the same detector, and the pose model hard-wired to batch 5.

Markers: cone-shaped blobs of one pure channel whose peak is the keypoint, so argmax finds the centre.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
N_KP = 133
R, G, B = 0, 1, 2

# Which colour channel each COCO-WholeBody keypoint follows, and its peak gain (0 = never found)
CHANNELS = np.zeros(N_KP, np.int64)
GAINS = np.zeros(N_KP, np.float32)
CHANNELS[0], GAINS[0] = R, 1.0  # nose
CHANNELS[5], GAINS[5] = G, 1.0  # left shoulder
CHANNELS[6], GAINS[6] = B, 1.0  # right shoulder
CHANNELS[23:91], GAINS[23:91] = R, 0.2  # face: low score, kept with its score
CHANNELS[91:112], GAINS[91:112] = G, 1.3  # left hand: score above 1
CHANNELS[112:133], GAINS[112:133] = B, 0.5  # right hand


def _sigmoid_peak(gain: float) -> float:
    return float(gain / (1 + np.exp(-4 * ((255 - MEAN[0]) / STD[0] - 1))))


def draw_marker(image: np.ndarray, x: float, y: float, channel: int, radius: float = 9.0) -> None:
    """A cone of pure `channel` peaking (255) at the sub-pixel point (x, y); other channels untouched (0)."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    cone = np.clip(1 - np.hypot(xx - x, yy - y) / radius, 0, 1) * 255
    image[..., channel] = np.maximum(image[..., channel], cone.round().astype(np.uint8))


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "fake", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _c(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def blob_det_onnx(path: str, input_name: str = "images") -> None:
    inits = [_c("ax_c", np.array([1], np.int64)), _c("ax_h", np.array([0, 1, 2], np.int64)),
             _c("ax_w", np.array([0, 1, 3], np.int64)), _c("thr", np.float32(200)), _c("one", np.float32(1)),
             _c("s32", np.float32(32)), _c("half", np.float32(0.5)), _c("score", np.float32(0.9)),
             _c("zeros79", np.zeros(79, np.float32)), _c("shape_row", np.array([1, 1, 85], np.int64)),
             _c("pads", np.array([0, 8000, 0, 0, 399, 0], np.int64))]
    n = helper.make_node
    nodes = [
        n("ReduceMax", [input_name, "ax_c"], ["cmax"], keepdims=1),
        n("Greater", ["cmax", "thr"], ["maskb"]), n("Cast", ["maskb"], ["mask"], to=TensorProto.FLOAT),
        n("ReduceMax", ["mask", "ax_h"], ["colp"], keepdims=0),  # [640] along x (max over y)
        n("ReduceMax", ["mask", "ax_w"], ["rowp"], keepdims=0),  # [640] along y (max over x)
    ]
    for axis, prof in (("x", "colp"), ("y", "rowp")):
        nodes += [
            n("ArgMax", [prof], [f"{axis}0i"], axis=0, keepdims=1),
            n("ArgMax", [prof], [f"{axis}1i"], axis=0, keepdims=1, select_last_index=1),
            n("Cast", [f"{axis}0i"], [f"{axis}0"], to=TensorProto.FLOAT),
            n("Cast", [f"{axis}1i"], [f"{axis}1a"], to=TensorProto.FLOAT),
            n("Add", [f"{axis}1a", "one"], [f"{axis}1"]),  # exclusive edge
            n("Sub", [f"{axis}1", f"{axis}0"], [f"{axis}len"]),
            n("Add", [f"{axis}0", f"{axis}1"], [f"{axis}sum"]), n("Mul", [f"{axis}sum", "half"], [f"{axis}c"]),
            n("Div", [f"{axis}c", "s32"], [f"o_{axis}"]),  # anchor 8000: gx = gy = 0, stride 32
            n("Div", [f"{axis}len", "s32"], [f"{axis}rel"]), n("Log", [f"{axis}rel"], [f"o_{axis}wh"]),
        ]
    nodes += [
        n("ReduceMax", ["colp"], ["anyv"], keepdims=1), n("Mul", ["anyv", "score"], ["cls"]),
        n("Concat", ["o_x", "o_y", "o_xwh", "o_ywh", "anyv", "cls", "zeros79"], ["row"], axis=0),
        n("Reshape", ["row", "shape_row"], ["row3"]),
        n("Pad", ["row3", "pads"], ["output"], mode="constant"),
    ]
    onnx.save(_model(nodes, [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, 640, 640])],
                     [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8400, 85])], inits), path)


def const_det_rows(boxes_letterbox: list[tuple[float, float, float, float]], scores: list[float],
                   classes: list[int] | None = None) -> np.ndarray:
    """[1,8400,85] raw YOLOX output whose decode gives these letterbox boxes (stride-32 anchors), as spec §7a."""
    out = np.zeros((1, 8400, 85), np.float32)
    used = set()
    for k, ((x0, y0, x1, y1), s) in enumerate(zip(boxes_letterbox, scores, strict=True)):
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        gx, gy = int(cx // 32), int(cy // 32)
        row = 8000 + 20 * gy + gx
        if row in used:
            raise ValueError("two fake boxes on one anchor: move them apart")
        used.add(row)
        out[0, row, :4] = [cx / 32 - gx, cy / 32 - gy, np.log(w / 32), np.log(h / 32)]
        out[0, row, 4] = 1.0
        out[0, row, 5 + (classes[k] if classes else 0)] = s
    return out


def const_det_onnx(path: str, rows: np.ndarray) -> None:
    n = helper.make_node
    inits = [_c("rows", rows), _c("zero", np.float32(0))]
    nodes = [n("ReduceMean", ["images"], ["m"], keepdims=0), n("Mul", ["m", "zero"], ["z"]),
             n("Add", ["rows", "z"], ["output"])]
    onnx.save(_model(nodes, [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
                     [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8400, 85])], inits), path)


def marker_pose_onnx(path: str, batch: int | str = "batch") -> None:
    n = helper.make_node
    inits = [_c("std", STD.reshape(1, 3, 1, 1)), _c("mean", MEAN.reshape(1, 3, 1, 1)),
             _c("inv255", np.float32(1 / 255)),  # work on 0..1 after un-normalising
             _c("k4", np.float32(4 * 255 / STD[0])), _c("off", np.float32(4 * (1 + MEAN[0] / STD[0]))),
             _c("ax_h", np.array([2], np.int64)), _c("ax_w", np.array([3], np.int64)),
             _c("ch", CHANNELS), _c("gain", GAINS.reshape(1, N_KP, 1)),
             _c("rep2", np.array([1, 1, 1, 2], np.int64)), _c("ax_last", np.array([3], np.int64))]
    # sigmoid(4*(raw/255*255/std0 - 1 - mean0/std0)): one fixed curve for every channel (un-normalised pixels)
    nodes = [n("Mul", ["input", "std"], ["a"]), n("Add", ["a", "mean"], ["pix"]), n("Mul", ["pix", "inv255"], ["p01"]),
             n("Mul", ["p01", "k4"], ["t"]), n("Sub", ["t", "off"], ["t2"]), n("Sigmoid", ["t2"], ["sig"])]
    for axis, red, bins in (("x", "ax_h", 576), ("y", "ax_w", 768)):
        nodes += [
            n("ReduceMax", ["sig", red], [f"p{axis}"], keepdims=0),  # [N,3,L]
            n("Unsqueeze", [f"p{axis}", "ax_last"], [f"u{axis}"]),
            n("Tile", [f"u{axis}", "rep2"], [f"t{axis}"]),  # [N,3,L,2]: two SimCC bins per pixel
            n("Shape", [f"p{axis}"], [f"s{axis}"]),
            n("Slice", [f"s{axis}", "z0", "two"], [f"nb{axis}"]),
            n("Concat", [f"nb{axis}", f"bins{axis}"], [f"shape{axis}"], axis=0),
            n("Reshape", [f"t{axis}", f"shape{axis}"], [f"r{axis}"]),
            n("Gather", [f"r{axis}", "ch"], [f"g{axis}"], axis=1),
            n("Mul", [f"g{axis}", "gain"], [f"simcc_{axis}"]),
        ]
        inits.append(_c(f"bins{axis}", np.array([bins], np.int64)))
    inits += [_c("z0", np.array([0], np.int64)), _c("two", np.array([2], np.int64))]
    onnx.save(_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 384, 288])],
                     [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [batch, N_KP, 576]),
                      helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [batch, N_KP, 768])], inits), path)


class BlobDetTorch(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (x.amax(1) > 200).to(x.dtype)[0]  # [640,640]
        col, row = mask.amax(0), mask.amax(1)
        idx = torch.arange(640, dtype=x.dtype, device=x.device)
        big = torch.full_like(idx, 1e4)
        x0 = torch.where(col > 0, idx, big).amin()
        x1 = torch.where(col > 0, idx, -big).amax() + 1
        y0 = torch.where(row > 0, idx, big).amin()
        y1 = torch.where(row > 0, idx, -big).amax() + 1
        anyv = col.amax()
        w = torch.clamp(x1 - x0, min=1.0)
        h = torch.clamp(y1 - y0, min=1.0)
        head = torch.stack([(x0 + x1) / 64, (y0 + y1) / 64, torch.log(w / 32), torch.log(h / 32), anyv * 0 + 1,
                            anyv * 0.9])
        head = torch.where(anyv > 0, head, torch.zeros_like(head))
        row_ = torch.cat([head, torch.zeros(79, dtype=x.dtype, device=x.device)]) + self.dummy * 0
        out = torch.zeros(1, 8400, 85, dtype=x.dtype, device=x.device)
        out[0, 8000] = row_
        return out


class MarkerPoseTorchBS5(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("mean", torch.from_numpy(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.from_numpy(STD).view(1, 3, 1, 1))
        self.register_buffer("ch", torch.from_numpy(CHANNELS))
        self.register_buffer("gain", torch.from_numpy(GAINS).view(1, N_KP, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.reshape(5, 3, 384, 288)  # traced at batch 5 like hr16's file: any other batch fails
        pix = x * self.std.to(x.dtype) + self.mean.to(x.dtype)
        sig = torch.sigmoid(4 * (pix.float() / STD[0] - 1 - MEAN[0] / STD[0]))
        px = sig.amax(2).repeat_interleave(2, dim=-1)[:, self.ch] * self.gain
        py = sig.amax(3).repeat_interleave(2, dim=-1)[:, self.ch] * self.gain
        return (px + self.dummy * 0).to(x.dtype), py.to(x.dtype)


def blob_det_torchscript(path: str) -> None:
    torch.jit.save(torch.jit.trace(BlobDetTorch().eval(), torch.zeros(1, 3, 640, 640)), path)


def marker_pose_torchscript(path: str) -> None:
    torch.jit.save(torch.jit.trace(MarkerPoseTorchBS5().eval(), torch.zeros(5, 3, 384, 288)), path)


PEAK_SCORE = _sigmoid_peak(1.0)  # the score a keypoint with gain 1 gets on a 255 marker
