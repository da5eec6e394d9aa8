"""Convert ComfyUI UI-format workflows (what the frontend saves) to the API format (what POST /prompt takes).

Plain Python: no ComfyUI import. The node definitions come from ComfyUI's /object_info (or the same dicts built
in-process with `object_info_from_host()`): their input order, input types and widget options say which widgets the
frontend creates for a node, in which order, and under which names, so saved widget values map to input names.

Frontend conventions handled (comfyui-frontend-package 1.32 up to 1.58):
- a saved node has `widgets_values`, the values of its widgets in widget order; the newest frontend (1.58) also
  writes `widgets_values_named`, the same values keyed by widget name, which is read in preference (the frontend
  itself restores by position unless its experimental Comfy.Workflow.NamedValuesRestore setting is on; both forms
  come from the same widgets); an older `widgets_values` dict keyed by input name is read by name too;
- a widget without a saved value (an input newer than the save) gets the frontend's default for it (the spec's
  default, else a combo's first choice, 0, "", False), which the frontend sends too;
- widgets are created in `input_order` (required, then optional), one per widget input: a classic kind (INT,
  FLOAT, STRING, BOOLEAN, COMBO) or a newer one (VIDEO_EDIT, whose value is a dict such as
  {"trim": {"start_time", "duration"}, "crop": {"x", "y", "width", "height"}}, COLOR, CURVE, ...), unless the input
  is `forceInput`; an input that has a link takes the link;
- a DynamicCombo (type COMFY_DYNAMICCOMBO_V3, options [{"key", "inputs": {"required", "optional"}}]) is a combo
  whose selected option's inputs follow it as widgets named `<combo>.<input>` (nested DynamicCombos nest the
  names: `format.codec.encoding.crf`); the API prompt carries them as flat dotted keys ("format": "mp4",
  "format.codec": "h264"), which the newest server turns back into nested dicts;
- frontend-only companion values are skipped: the control value after an INT/FLOAT/COMBO with
  `control_after_generate` (and INT `seed`/`noise_seed`), plus the filter text after such a COMBO; the upload
  button of a media combo (`image_upload`, `video_upload`, ...), which comes after all other widgets;
- list values are sent as {"__value__": [...]} (a bare list would read as a link), CURVE values as
  {"__type__": "CURVE", "__value__": ...}, as the frontend's graphToPrompt does;
- Note, MarkdownNote, Reroute and PrimitiveNode are frontend-only: reroutes are followed to their source, a
  primitive's value becomes the constant of each input it feeds;
- muted nodes (mode 2) are dropped; bypassed nodes (mode 4) pass their first input of the same type through.

Usage: python scripts/comfy_workflow.py workflow.json object_info.json > api.json
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode", "PrimitiveStringMultiline"})
# Input types the frontend builds a one-value widget for (ComfyWidgets in comfyui-frontend-package 1.58.1
# src/scripts/widgets.ts, less the ones that save no value or more than one).
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "VIDEO_EDIT", "COLOR", "COLORS", "CURVE",
                          "RANGE", "BOUNDING_BOXES", "TEXTAREA", "MARKDOWN", "CHART", "GALLERIA", "PAINTER",
                          "COMPOSITOR", "LIGHT_INFO_PREVIEW"})
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
# Widgets that save a layout this converter does not model (BOUNDING_BOX adds a second saved widget, a
# DynamicGroup a list of rows): only their by-name values (`widgets_values_named`) can be read.
UNMODELLED_WIDGET_TYPES = frozenset({"BOUNDING_BOX", "COMFY_DYNAMICGROUP_V3"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload", "file_upload")
UPLOAD_BUTTON = "IMAGEUPLOAD"  # the frontend's type for the upload button it adds after a media combo
MODE_MUTED, MODE_BYPASSED = 2, 4

InputSpec = list  # [type or list of choices, options dict]


class WorkflowError(ValueError):
    """A workflow that cannot be converted; the message names the node and what is wrong."""


def load_workflow(path: str | Path) -> dict[str, Any]:
    """Read a UI-format workflow JSON file."""
    with open(path, encoding="utf-8") as f:
        workflow = json.load(f)
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise WorkflowError(f"{path} is not a UI-format workflow (no 'nodes' list); API-format files need no "
                            "conversion.")
    return workflow


def object_info_from_host() -> dict[str, Any]:
    """ComfyUI's /object_info built in-process from nodes.NODE_CLASS_MAPPINGS (ComfyUI must already be loaded)."""
    import nodes  # ComfyUI's, imported lazily so this module stays usable without ComfyUI
    from comfy_api.latest._io import _ComfyNodeInternal

    info: dict[str, Any] = {}
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        if issubclass(cls, _ComfyNodeInternal):
            info[name] = cls.GET_NODE_INFO_V1()
        else:
            types = cls.INPUT_TYPES()
            info[name] = {"input": types, "input_order": {k: list(v) for k, v in types.items()},
                          "output": list(cls.RETURN_TYPES),
                          "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
                          "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name)}
    return info


def _options(spec: Any) -> dict[str, Any]:
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}


def widget_kind(spec: Any) -> str | None:
    """The kind of widget the frontend builds for an input spec ("COMBO", "INT", DYNAMIC_COMBO, "VIDEO_EDIT",
    ...), or None when the input is a socket only."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    options = _options(spec)
    if options.get("forceInput"):
        return None
    kind = options.get("widgetType") or spec[0]
    if isinstance(kind, list):
        return "COMBO"
    if kind in WIDGET_TYPES or kind in UNMODELLED_WIDGET_TYPES or kind == DYNAMIC_COMBO:
        return kind
    return None


def _companions(name: str, kind: str, options: dict[str, Any]) -> int:
    """How many frontend-only values the frontend saves right after this widget's own value."""
    control = options.get("control_after_generate")
    if control is None and kind == "INT" and name in ("seed", "noise_seed"):
        control = True
    if not control or kind not in ("INT", "FLOAT", "COMBO"):
        return 0
    return 2 if kind == "COMBO" else 1  # a combo's control also has a filter-list text widget


def ordered_inputs(node_info: dict[str, Any], upload_button: bool = False) -> list[tuple[str, InputSpec]]:
    """(name, spec) of a node's inputs in the order the frontend creates their widgets: required then optional in
    `input_order`, then any input it does not list (getOrderedInputSpecs, frontend src/workbench/utils). With
    upload_button, the upload button the frontend adds to a node with a media combo is there too, as the input
    ("upload", [UPLOAD_BUTTON]) appended to the required ones (the Comfy.UploadImage extension), which puts it
    after all listed inputs."""
    inputs = {k: dict(v or {}) for k, v in node_info.get("input", {}).items() if k != "hidden"}
    required = inputs.setdefault("required", {})
    if upload_button and any(widget_kind(spec) == "COMBO" and any(_options(spec).get(f) for f in UPLOAD_FLAGS)
                             for spec in required.values()):
        required.setdefault("upload", [UPLOAD_BUTTON, {}])
    order = node_info.get("input_order") or {}
    result: list[tuple[str, InputSpec]] = []
    for section in ("required", "optional"):
        specs = inputs.get(section) or {}
        result += [(name, specs[name]) for name in order.get(section, []) if name in specs]
    seen = {name for name, _ in result}
    for section in ("required", "optional"):
        result += [(name, spec) for name, spec in (inputs.get(section) or {}).items() if name not in seen]
    return result


def dynamic_option_inputs(name: str, spec: InputSpec, key: Any) -> list[tuple[str, InputSpec]]:
    """The inputs a DynamicCombo adds for its selected option `key`, under their dotted names (required first)."""
    for option in _options(spec).get("options") or []:
        if isinstance(option, dict) and option.get("key") == key:
            inputs = option.get("inputs") or {}
            return [(f"{name}.{sub}", sub_spec) for section in ("required", "optional")
                    for sub, sub_spec in (inputs.get(section) or {}).items()]
    return []


def all_input_names(node_info: dict[str, Any]) -> set[str]:
    """Every input name a prompt may carry for the node, with the dotted names of every DynamicCombo option."""
    def walk(pairs: list[tuple[str, InputSpec]]) -> Iterator[str]:
        for name, spec in pairs:
            yield name
            if isinstance(spec, (list, tuple)) and spec and spec[0] == DYNAMIC_COMBO:
                for option in _options(spec).get("options") or []:
                    yield from walk(dynamic_option_inputs(name, spec, option.get("key")))
    return set(walk(ordered_inputs(node_info)))


_NO_DEFAULT = object()


def widget_default(kind: str, spec: InputSpec) -> Any:
    """The value the frontend gives a new widget (its widget constructors: the spec's default, else a combo's first
    choice, 0, "", False, or VIDEO_EDIT's zero trim/crop), or _NO_DEFAULT."""
    options = _options(spec)
    if kind == DYNAMIC_COMBO:
        keys = [o.get("key") for o in options.get("options") or [] if isinstance(o, dict)]
        return keys[0] if keys else _NO_DEFAULT
    if kind == "COMBO":
        choices = spec[0] if isinstance(spec[0], list) else options.get("options") or []
        return options.get("default") or (choices[0] if choices else _NO_DEFAULT)
    if "default" in options:
        return copy.deepcopy(options["default"])
    if kind == "VIDEO_EDIT":
        features = options.get("features") or ["trim", "crop"]
        return {**({"trim": {"start_time": 0, "duration": 0}} if "trim" in features else {}),
                **({"crop": {"x": 0, "y": 0, "width": 0, "height": 0}} if "crop" in features else {})}
    return {"INT": 0, "FLOAT": 0, "STRING": "", "BOOLEAN": False}.get(kind, _NO_DEFAULT)


def _by_name(values: dict[str, Any], pairs: list[tuple[str, InputSpec]], out: dict[str, tuple[Any, str]]) -> None:
    for name, spec in pairs:
        kind = widget_kind(spec)
        if kind is None:
            continue
        value = values[name] if name in values else widget_default(kind, spec)
        if value is _NO_DEFAULT:
            continue
        out[name] = (value, kind)
        if kind == DYNAMIC_COMBO:
            _by_name(values, dynamic_option_inputs(name, spec, value), out)


def _by_position(values: list, pos: int, pairs: list[tuple[str, InputSpec]], out: dict[str, tuple[Any, str]],
                 where: str) -> int:
    """Reads values[pos:] into out the way the frontend's configure() restores them; returns the next position.
    A DynamicCombo's option widgets are created as soon as its value is set, so they take the next values. Widgets
    past the saved values (inputs newer than the save) keep their defaults."""
    for name, spec in pairs:
        if isinstance(spec, list) and spec[:1] == [UPLOAD_BUTTON]:
            pos += 1  # its value ("image") is frontend-only; older saves may lack it, which is fine at the end
            continue
        kind = widget_kind(spec)
        if kind is None:
            continue
        if pos < len(values):
            if kind in UNMODELLED_WIDGET_TYPES:
                raise WorkflowError(f"{where}: input {name!r} is a {kind} widget, whose position-only saved values "
                                    "this converter cannot read: save the workflow again with a current ComfyUI "
                                    "frontend (it also writes the values by name, widgets_values_named).")
            value = values[pos]
        else:
            value = widget_default(kind, spec)
            if value is _NO_DEFAULT:
                continue
        if kind == "VIDEO_EDIT" and not isinstance(value, dict):
            raise WorkflowError(f"{where}: input {name!r} (VIDEO_EDIT) would get {value!r} from widgets_values "
                                f"position {pos}: the node was saved for an older definition of it (for Load Video, "
                                "a file and the upload button's value). Open and save it again in the current "
                                "ComfyUI, or remove the extra value.")
        out[name] = (value, kind)
        pos += 1 + _companions(name, kind, _options(spec))  # the dotted name: "format.seed" gets no control
        if kind == DYNAMIC_COMBO:
            pos = _by_position(values, pos, dynamic_option_inputs(name, spec, value), out, where)
    return pos


def _api_value(value: Any, kind: str) -> Any:
    if kind == "CURVE" and value is not None:
        return {"__type__": "CURVE", "__value__": value}
    return {"__value__": value} if isinstance(value, list) else value


def widget_values(node: dict[str, Any], node_info: dict[str, Any]) -> dict[str, Any]:
    """{input name: API value} of the node's saved widgets (dotted names for DynamicCombo options)."""
    where = f"Node {node.get('id')} ({node.get('type')})"
    named = node.get("widgets_values_named")
    values = node.get("widgets_values")
    pairs = ordered_inputs(node_info, upload_button=True)
    found: dict[str, tuple[Any, str]] = {}
    if isinstance(named, dict):
        _by_name(named, pairs, found)
    elif isinstance(values, dict):
        _by_name(values, pairs, found)
    elif isinstance(values, list) or values is None:
        _by_position(values or [], 0, pairs, found, where)
    else:
        raise WorkflowError(f"{where}: widgets_values is {type(values).__name__}, expected a list or a dict.")
    return {name: _api_value(value, kind) for name, (value, kind) in found.items()}


def ui_to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The API-format prompt of a UI-format workflow: {node id: {"class_type", "inputs", "_meta": {"title"}}}."""
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("This workflow uses subgraphs, which this converter does not expand: unpack them in the "
                            "ComfyUI editor (right click > Unpack Subgraph) and save again.")
    nodes_by_id = {str(n["id"]): n for n in workflow["nodes"]}
    links: dict[int, tuple[str, int, str]] = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[int(link["id"])] = (str(link["origin_id"]), int(link["origin_slot"]), str(link.get("type", "*")))
        else:
            links[int(link[0])] = (str(link[1]), int(link[2]), str(link[5] if len(link) > 5 else "*"))

    def source(link_id: int | None, seen: frozenset = frozenset()) -> tuple[str, Any] | None:
        """("link", [node, slot]) or ("value", constant) for a link, following reroutes, primitives and bypasses."""
        if link_id is None or link_id not in links:
            return None
        origin_id, slot, _ = links[link_id]
        if origin_id in seen:
            raise WorkflowError(f"Node {origin_id} is part of a loop of reroutes/bypassed nodes.")
        origin = nodes_by_id.get(origin_id)
        if origin is None:
            raise WorkflowError(f"Link {link_id} comes from node {origin_id}, which is not in the workflow.")
        kind, mode = origin.get("type"), origin.get("mode", 0)
        if kind == "Reroute":
            inputs = origin.get("inputs") or [{}]
            return source(inputs[0].get("link"), seen | {origin_id})
        if kind in ("PrimitiveNode", "PrimitiveStringMultiline") and kind not in object_info:
            values = origin.get("widgets_values") or []
            return ("value", values[0]) if values else None
        if mode == MODE_MUTED:
            return None
        if mode == MODE_BYPASSED:
            out_type = (origin.get("outputs") or [{}] * (slot + 1))[slot].get("type")
            for inp in origin.get("inputs") or []:
                if inp.get("link") is not None and inp.get("type") == out_type:
                    return source(inp["link"], seen | {origin_id})
            return None
        return ("link", [origin_id, slot])

    api: dict[str, Any] = {}
    for node_id, node in nodes_by_id.items():
        kind = node.get("type")
        if kind in FRONTEND_ONLY and kind not in object_info or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
            continue
        if kind not in object_info:
            raise WorkflowError(f"Node {node_id} has type {kind!r}, which this ComfyUI does not know: install the "
                                "node pack that provides it (or check its name).")
        info = object_info[kind]
        inputs = widget_values(node, info)
        for inp in node.get("inputs") or []:
            name = (inp.get("widget") or {}).get("name") or inp.get("name")
            found = source(inp.get("link"))
            if found is not None:
                inputs[name] = found[1]
        api[node_id] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title") or
                                                                        info.get("display_name") or kind}}
    return api


def find_nodes(api: dict[str, Any], key: str) -> list[str]:
    """Node ids matching key: a node id, else a title, else a class_type."""
    if key in api:
        return [key]
    by_title = [i for i, n in api.items() if n.get("_meta", {}).get("title") == key]
    return by_title or [i for i, n in api.items() if n["class_type"] == key]


def set_inputs(api: dict[str, Any], overrides: dict[str, dict[str, Any]],
               object_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of api with inputs replaced: {node id | title | class_type: {input: value}} (a class_type sets every
    node of that type). With object_info, unknown input names are refused."""
    result = copy.deepcopy(api)
    for key, values in overrides.items():
        ids = find_nodes(result, key)
        if not ids:
            raise WorkflowError(f"No node with id, title or class_type {key!r}; the graph has: "
                                f"{sorted({n['class_type'] for n in result.values()})}")
        for node_id in ids:
            node = result[node_id]
            if object_info is not None and node["class_type"] in object_info:
                info = object_info[node["class_type"]]
                known = all_input_names(info) | set(info.get("input", {}).get("hidden") or {})
                unknown = set(values) - known
                if unknown:
                    raise WorkflowError(f"{node['class_type']} (node {node_id}) has no input(s) {sorted(unknown)}; "
                                        f"its inputs are {sorted(known)}")
            node["inputs"].update(copy.deepcopy(values))
    return result


def replace_node(api: dict[str, Any], node_id: str, outputs: list[tuple[str, dict[str, Any]] | None]) -> dict:
    """A copy of api where node_id is removed and each of its output slots is served by a new node: outputs[slot] =
    (class_type, inputs) whose output 0 replaces that slot (None: the slot must be unused)."""
    result = copy.deepcopy(api)
    del result[node_id]
    new_ids = {}
    for slot, spec in enumerate(outputs):
        if spec is not None:
            new_id = f"{node_id}_{slot}"
            result[new_id] = {"class_type": spec[0], "inputs": dict(spec[1]), "_meta": {"title": spec[0]}}
            new_ids[slot] = new_id
    for other_id, node in result.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == node_id:
                if value[1] not in new_ids:
                    raise WorkflowError(f"Node {other_id} input {name} uses output {value[1]} of node {node_id}, "
                                        "which the replacement does not provide.")
                node["inputs"][name] = [new_ids[value[1]], 0]
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with open(argv[2], encoding="utf-8") as f:
        object_info = json.load(f)
    json.dump(ui_to_api(load_workflow(argv[1]), object_info), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
