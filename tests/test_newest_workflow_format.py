"""scripts/comfy_workflow.py on a workflow saved by the newest ComfyUI frontend for the newest node definitions.

The fixtures in tests/data (the 0.3.75 host has neither these node definitions nor this frontend):
- newest_object_info_video.json: /object_info of SaveVideo, LoadVideo and CreateVideo as ComfyUI 0.38.x serves
  them, written from Comfy-Org/ComfyUI comfy_extras/nodes_video.py (commit 39b885f; the other stored version,
  9889d18, has the same SaveVideo and a LoadVideo without `edit`. SaveVideo's `format` is a
  DynamicCombo whose options nest the `codec` DynamicCombo, which nests `encoding` and its `crf`; LoadVideo has the
  optional VIDEO_EDIT `edit`; CreateVideo gained optional bit_depth, color_space and codec combos) by the as_dict
  rules of comfy_api/latest/_io.py (DynamicCombo.Option.as_dict -> {"key", "inputs": {"required", "optional"}},
  VideoEdit.Input default {"trim": {...}, "crop": {...}}, NodeInfoV1 input_order).
- newest_frontend_dance_video.json: example_workflows/controlnext_svd_dance_video.json loaded into
  comfyui-frontend-package 1.58.1 (PyPI) in headless Chromium against the test server, with those three
  definitions served in place of the host's (DevTools Fetch interception of /api/object_info); Save Video set to
  mp4 / h264 / re-encode / crf 20, Load Video's edit to a 0.25 s + 2 s trim and Create Video's bit_depth to 8
  through the node widgets' value setters (what the UI controls call); then written as the frontend's
  Export does (workflowService.exportWorkflow: app.graphToPrompt().workflow plus extra.ds). The frontend's
  serialiseWidgetValues (src/lib/litegraph/src/LGraphNode.ts) writes every node's widgets twice: positional
  `widgets_values` (widget order, companions included) and `widgets_values_named` (keyed by widget name).
- newest_frontend_dance_video.api.json: the API prompt that frontend built from the same graph
  (app.graphToPrompt().output, what its Queue button sends; src/utils/executionUtil.ts): flat dotted keys for
  the DynamicCombo members ("format.codec": "h264"), the edit dict as it is, no upload-button value.
"""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest

from conftest import ROOT

DATA = ROOT / "tests" / "data"
_spec = importlib.util.spec_from_file_location("comfy_workflow", ROOT / "scripts" / "comfy_workflow.py")
cw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cw)

NEWEST_INFO = json.loads((DATA / "newest_object_info_video.json").read_text(encoding="utf-8"))
SAVED = json.loads((DATA / "newest_frontend_dance_video.json").read_text(encoding="utf-8"))
FRONTEND_PROMPT = json.loads((DATA / "newest_frontend_dance_video.api.json").read_text(encoding="utf-8"))
EXAMPLES = sorted((ROOT / "example_workflows").glob("*.json"))
NO_EDIT = {"trim": {"start_time": 0.0, "duration": 0.0}, "crop": {"x": 0, "y": 0, "width": 0, "height": 0}}


@pytest.fixture(scope="module")
def object_info() -> dict:
    """The host's /object_info (this pack and the core nodes the workflow uses) with the newest video nodes."""
    return cw.object_info_from_host() | NEWEST_INFO


def node_of(workflow: dict, kind: str) -> dict:
    (node,) = [n for n in workflow["nodes"] if n["type"] == kind]
    return node


def test_the_fixture_is_what_the_newest_frontend_saves():
    assert SAVED["extra"]["frontendVersion"] == "1.58.1"
    save = node_of(SAVED, "SaveVideo")
    # the DynamicCombo's option widgets follow it, the hidden top-level codec widget comes last
    assert save["widgets_values"] == ["video/ControlNeXt_dance", "mp4", "h264", "re-encode", 20, "auto"]
    assert list(save["widgets_values_named"]) == ["filename_prefix", "format", "format.codec",
                                                  "format.codec.encoding", "format.codec.encoding.crf", "codec"]
    load = node_of(SAVED, "LoadVideo")
    edit = {"trim": {"start_time": 0.25, "duration": 2}, "crop": {"x": 0, "y": 0, "width": 0, "height": 0}}
    # the upload button is added after every listed input, so its value follows the optional edit dict
    assert load["widgets_values"] == ["dance.mp4", edit, "image"]
    assert load["widgets_values_named"] == {"file": "dance.mp4", "edit": edit, "upload": "image"}
    sampler = node_of(SAVED, "ControlNeXtSampler")
    assert sampler["widgets_values"][:2] == [0, "fixed"] and sampler["widgets_values_named"]["seed"] == 0


def assert_same_prompt(api: dict) -> None:
    assert sorted(api) == sorted(FRONTEND_PROMPT)
    for node_id, expected in FRONTEND_PROMPT.items():
        got = api[node_id]
        assert got["class_type"] == expected["class_type"], node_id
        assert got["inputs"] == expected["inputs"], f"node {node_id} ({expected['class_type']})"
        assert got["_meta"]["title"] == expected["_meta"]["title"], node_id


def test_newest_save_converts_to_the_prompt_the_newest_frontend_sends(object_info):
    api = cw.ui_to_api(SAVED, object_info)
    assert_same_prompt(api)
    save_inputs = api["18"]["inputs"]
    assert {k: v for k, v in save_inputs.items() if k != "video"} == {
        "filename_prefix": "video/ControlNeXt_dance", "format": "mp4", "format.codec": "h264",
        "format.codec.encoding": "re-encode", "format.codec.encoding.crf": 20, "codec": "auto"}
    assert api["6"]["inputs"]["edit"]["trim"] == {"start_time": 0.25, "duration": 2}
    assert api["17"]["inputs"]["bit_depth"] == 8 and api["17"]["inputs"]["fps"] == ["7", 1]


@pytest.mark.parametrize("keep", ["widgets_values", "widgets_values_named"])
def test_either_saved_form_alone_converts_the_same(object_info, keep):
    """Positional values alone (what frontends before widgets_values_named wrote, and what 1.58.1 itself restores
    by default) and named values alone give the same prompt."""
    workflow = copy.deepcopy(SAVED)
    for node in workflow["nodes"]:
        for key in ("widgets_values", "widgets_values_named"):
            if key != keep:
                node.pop(key, None)
    assert_same_prompt(cw.ui_to_api(workflow, object_info))


def test_other_dynamic_combo_choices_take_their_own_widgets(object_info):
    workflow = copy.deepcopy(SAVED)
    save = node_of(workflow, "SaveVideo")
    del save["widgets_values_named"]
    save["widgets_values"] = ["clip", "webm", "av1", "auto", "auto"]  # av1 with the automatic encoding: no crf
    inputs = cw.ui_to_api(workflow, object_info)["18"]["inputs"]
    assert {k: v for k, v in inputs.items() if k != "video"} == {
        "filename_prefix": "clip", "format": "webm", "format.codec": "av1", "format.codec.encoding": "auto",
        "codec": "auto"}


def test_an_old_load_video_save_under_the_newest_definition(object_info):
    """An older save of Load Video ([file, upload-button value]) would hand "image" to the newest `edit` input, as
    the newest frontend's positional restore does; the converter says so instead. Without the button's value the
    edit keeps the default the frontend gives it (useVideoEditWidget.ts), which the frontend sends too."""
    workflow = copy.deepcopy(SAVED)
    load = node_of(workflow, "LoadVideo")
    del load["widgets_values_named"]
    load["widgets_values"] = ["dance.mp4", "image"]
    with pytest.raises(cw.WorkflowError, match=r"Node 6 \(LoadVideo\): input 'edit' \(VIDEO_EDIT\)"):
        cw.ui_to_api(workflow, object_info)
    load["widgets_values"] = ["dance.mp4"]
    assert cw.ui_to_api(workflow, object_info)["6"]["inputs"] == {"file": "dance.mp4", "edit": NO_EDIT}


def test_set_inputs_knows_dynamic_combo_members(object_info):
    api = cw.ui_to_api(SAVED, object_info)
    changed = cw.set_inputs(api, {"SaveVideo": {"format.codec.encoding.crf": 18.0}}, object_info)
    assert changed["18"]["inputs"]["format.codec.encoding.crf"] == 18.0
    with pytest.raises(cw.WorkflowError, match="no input"):
        cw.set_inputs(api, {"SaveVideo": {"format.crf": 18.0}}, object_info)


def test_newer_widget_kinds_and_companions():
    """Layouts from the frontend's widget constructors: a COMBO with control_after_generate saves its control value
    and a filter text after it (valueControlWidgets.ts), list values go out as {"__value__": ...}, CURVE values as
    {"__type__": "CURVE", ...} (executionUtil.ts); BOUNDING_BOX saves a second widget, so only its named value is
    read; widgets without a saved value take the default their widget constructor gives them."""
    info = {"Probe": {"input": {"required": {
        "mode": [["a", "b"], {"control_after_generate": True}],
        "tags": ["COMBO", {"options": ["x", "y"], "multi_select": {}}],
        "curve": ["CURVE", {"default": {"points": [[0, 0], [1, 1]]}}],
        "colour": ["COLOR", {"default": "#ffffff"}],
        "image": ["IMAGE", {}]}},
        "input_order": {"required": ["mode", "tags", "curve", "colour", "image"]}}}
    node = {"id": 1, "type": "Probe", "mode": 0, "inputs": [],
            "widgets_values": ["b", "randomize", "", ["x", "y"], {"points": [[0, 1]]}, "#000000"]}
    api = cw.ui_to_api({"nodes": [node], "links": []}, info)
    assert api["1"]["inputs"] == {"mode": "b", "tags": {"__value__": ["x", "y"]},
                                  "curve": {"__type__": "CURVE", "__value__": {"points": [[0, 1]]}},
                                  "colour": "#000000"}
    info["Probe"]["input"]["required"]["box"] = ["BOUNDING_BOX", {}]
    node["widgets_values"] += [{"x": 1, "y": 2, "width": 3, "height": 4}, "a sub-widget's value"]
    with pytest.raises(cw.WorkflowError, match="BOUNDING_BOX"):
        cw.ui_to_api({"nodes": [node], "links": []}, info)
    # by name; the widgets it lacks take the frontend's defaults (the spec's default, else the first choice)
    node["widgets_values_named"] = {"mode": "a", "box": {"x": 1, "y": 2, "width": 3, "height": 4}}
    assert cw.ui_to_api({"nodes": [node], "links": []}, info)["1"]["inputs"] == {
        "mode": "a", "tags": "x", "curve": {"__type__": "CURVE", "__value__": {"points": [[0, 0], [1, 1]]}},
        "colour": "#ffffff", "box": {"x": 1, "y": 2, "width": 3, "height": 4}}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_workflows_convert_under_the_newest_video_nodes(object_info, path):
    api = cw.ui_to_api(cw.load_workflow(path), object_info)
    (load,) = cw.find_nodes(api, "LoadVideo")
    assert api[load]["inputs"]["edit"] == NO_EDIT
    (save,) = cw.find_nodes(api, "SaveVideo")
    assert {k: v for k, v in api[save]["inputs"].items() if k.startswith(("format", "codec"))} == {
        "format": "auto", "format.codec": "auto", "codec": "auto"}
