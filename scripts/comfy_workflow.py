"""Convert ComfyUI UI-format workflows (what the frontend saves) to the API format (what POST /prompt takes).

Plain Python: no ComfyUI import. The node definitions come from ComfyUI's /object_info (or the same dicts built
in-process with `object_info_from_host()`), which give each node's inputs in the order the frontend creates its
widgets, so `widgets_values` can be mapped to input names.

Frontend conventions handled:
- widget values follow the node's widget inputs in definition order (required, then optional); an input that has a
  link takes the link, its widget value is skipped;
- an INT/COMBO with `control_after_generate` (and INT `seed`/`noise_seed`) is followed by the control value
  ("fixed", "randomize", ...), and a COMBO with `image_upload`/`video_upload`/`audio_upload` by the upload
  button's value; both are frontend-only and dropped when present;
- `widgets_values` may also be a dict keyed by input name;
- Note, MarkdownNote, Reroute and PrimitiveNode are frontend-only: reroutes are followed to their source, a
  primitive's value becomes the constant of each input it feeds;
- muted nodes (mode 2) are dropped; bypassed nodes (mode 4) pass their first input of the same type through.

Usage: python scripts/comfy_workflow.py workflow.json object_info.json > api.json
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode", "PrimitiveStringMultiline"})
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "file_upload")
MODE_MUTED, MODE_BYPASSED = 2, 4


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


def _is_widget(spec: Any) -> bool:
    if not isinstance(spec, (list, tuple)) or not spec:
        return False
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def widget_inputs(node_info: dict[str, Any]) -> list[tuple[str, bool]]:
    """(input name, has a frontend-only companion value) for each widget input, in the frontend's widget order."""
    inputs = node_info.get("input", {})
    order = node_info.get("input_order") or {k: list(v) for k, v in inputs.items()}
    result = []
    for section in ("required", "optional"):
        specs = inputs.get(section) or {}
        for name in order.get(section, list(specs)):
            spec = specs.get(name)
            if not _is_widget(spec):
                continue
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            kind = spec[0]
            control = options.get("control_after_generate")
            if control is None and kind == "INT" and name in ("seed", "noise_seed"):
                control = True
            upload = any(options.get(flag) for flag in UPLOAD_FLAGS)
            result.append((name, bool(control) or upload))
    return result


def _widget_values(node: dict[str, Any], node_info: dict[str, Any]) -> dict[str, Any]:
    values = node.get("widgets_values")
    widgets = widget_inputs(node_info)
    if values is None:
        return {}
    if isinstance(values, dict):
        names = {name for name, _ in widgets}
        return {k: v for k, v in values.items() if k in names}
    out: dict[str, Any] = {}
    i = 0
    for w, (name, companion) in enumerate(widgets):
        if i >= len(values):
            break
        out[name] = values[i]
        i += 1
        remaining_widgets = len(widgets) - w - 1
        # The companion value is there when the list has more values left than widgets left (older saves and some
        # frontends omit the upload button's value); a control value is also recognised by its text.
        if companion and i < len(values) and (len(values) - i > remaining_widgets or values[i] in CONTROL_VALUES):
            i += 1
    return out


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
        inputs = _widget_values(node, info)
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
                known = {n for section in object_info[node["class_type"]].get("input", {}).values()
                         for n in (section or {})}
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
