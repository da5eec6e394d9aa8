"""Node help pages (web/docs/<NodeId>.md): one per registered node, naming exactly the schema's inputs and outputs.

ComfyUI's frontend (1.32) fetches /extensions/<pack folder>/docs/<NodeId>/<locale>.md, then
/extensions/<pack folder>/docs/<NodeId>.md; the server serves the pack's WEB_DIRECTORY there (tests/test_server.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import nodes
import pytest

from conftest import PACK_LINK_NAME, ROOT, pack_import

DOCS = ROOT / "web" / "docs"
BULLET = re.compile(r"^- \*\*([^*]+)\*\*")


def registered() -> dict[str, type]:
    return {node.define_schema().node_id: node for node in pack_import("nodes").NODES}


def output_key(output: object) -> str:
    """How a page names an output: its display name, else its explicit id, else its type (what the node shows).

    define_schema() returns an unfinalised schema, so `id` is only set where the node gave one (finalize() would add
    "_0_LATENT_"-style ids later)."""
    return output.display_name or output.id or output.io_type


def section_bullets(text: str, heading: str) -> list[str]:
    """The bold names of the top-level bullets under `## heading`, in order (nested or continued lines ignored)."""
    lines = text.splitlines()
    if lines.count(f"## {heading}") != 1:
        raise ValueError(f"expected exactly one '## {heading}' section")
    start = lines.index(f"## {heading}") + 1
    names = []
    for line in lines[start:]:
        if line.startswith("#"):
            break
        match = BULLET.match(line)
        if match:
            names.append(match.group(1))
    return names


@pytest.mark.parametrize("node_id", sorted(registered()))
def test_every_node_has_a_page_matching_its_schema(node_id: str) -> None:
    page = DOCS / f"{node_id}.md"
    assert page.is_file(), f"no help page {page.relative_to(ROOT)} for the registered node {node_id}"
    text = page.read_text(encoding="utf-8")
    schema = registered()[node_id].define_schema()
    assert text.splitlines()[0] == f"# {schema.display_name}", "the page's title must be the node's display name"
    assert section_bullets(text, "Inputs") == [i.id for i in schema.inputs], "## Inputs must follow the schema"
    assert section_bullets(text, "Outputs") == [output_key(o) for o in schema.outputs], \
        "## Outputs must follow the schema"
    assert 15 <= len(text.splitlines()) <= 90, "keep the page concise"


def test_no_page_for_an_unregistered_node() -> None:
    pages = {p.stem for p in DOCS.glob("*.md")} | {p.name for p in DOCS.iterdir() if p.is_dir()}
    assert pages, "web/docs has no pages"
    assert not pages - registered().keys(), "help pages for nodes the pack does not register"
    assert {p.name for p in DOCS.iterdir()} == {f"{p}.md" for p in pages}, "web/docs holds only <NodeId>.md pages"


def test_comfyui_registered_the_web_directory() -> None:
    # load_custom_node registers the pack's WEB_DIRECTORY under the pack's folder name, the name the frontend uses
    web_dir = nodes.EXTENSION_WEB_DIRS.get(PACK_LINK_NAME)
    assert web_dir is not None, f"ComfyUI has no web directory for {PACK_LINK_NAME}: {nodes.EXTENSION_WEB_DIRS}"
    assert Path(web_dir).resolve() == (ROOT / "web").resolve()
    assert not list(Path(web_dir).rglob("*.js")), "web/ is served as-is: a .js file there would run in every page"
