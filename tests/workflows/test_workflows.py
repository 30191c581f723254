"""The shipped workflows (workflows/*.json, UI format) are well formed for ComfyUI v0.33.0 and our nodes.

Checked without ComfyUI: every node is one of ours, a core node of v0.33.0 (definitions in
comfyui_v0.33.0_core_nodes.json, taken from its /object_info) or a frontend-only note; every widget value has the
right type and lies in its range or options; every link joins an output to an input of the same type; every
required input is connected; and the API-format twin under api/ is what the UI workflow converts to.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
CORE_NODES = {k: v for k, v in json.loads((HERE / "comfyui_v0.33.0_core_nodes.json").read_text()).items()
              if not k.startswith("_")}
FRONTEND_ONLY = {"Note", "MarkdownNote"}
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
FILE_LISTS = {("LoadImage", "image"), ("LoadVideo", "file"),
              ("CheckpointLoaderSimple", "ckpt_name")}  # what the user has on disk


@pytest.fixture
def definitions(node_classes) -> dict:
    """object_info-like definitions: our nodes (from the pack itself) and the core nodes of v0.33.0."""
    defs = dict(CORE_NODES)
    for node_id, cls in node_classes.items():
        defs[node_id] = json.loads(json.dumps(cls.GET_NODE_INFO_V1()))  # as /object_info serves it
    return defs


def _inputs_in_order(definition: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, required) in the order the frontend lays widgets out: required, then optional."""
    out = []
    for group in ("required", "optional"):
        for name in definition["input_order"].get(group, []):
            out.append((name, list(definition["input"][group][name]), group == "required"))
    return out


def _widget(spec: list) -> tuple[bool, object, dict]:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if kind == DYNAMIC_COMBO:  # a combo whose choice adds widgets (SaveVideo's codec): checked as a plain combo
        choices = {option["key"]: option["inputs"] for option in opts["options"]}
        return True, "COMBO", {**opts, "options": list(choices), "option_inputs": choices}
    is_widget = (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")
    return is_widget, kind, opts


def _widget_values(node: dict, definition: dict) -> dict:
    """Widget name -> value, read from widgets_values the way the frontend writes them."""
    values, rest = {}, list(node.get("widgets_values", []))
    for name, spec, _ in _inputs_in_order(definition):
        is_widget, kind, opts = _widget(spec)
        if not is_widget:
            continue
        values[name] = rest.pop(0)
        if "option_inputs" in opts:  # the widgets a dynamic combo's choice adds are not checked here
            assert not any(opts["option_inputs"].get(values[name], {}).values()), \
                f"{node['type']}.{name}={values[name]!r} adds widgets; this check does not read them"
        if opts.get("control_after_generate"):
            assert rest.pop(0) in CONTROL_VALUES, f"{node['type']}.{name}: bad control_after_generate value"
        if opts.get("image_upload") or opts.get("video_upload"):
            rest.pop(0)  # the upload button's own value
    assert not rest, f"{node['type']} has {len(rest)} widget values too many"
    return values


def _check_value(node_type: str, name: str, spec: list, value) -> None:
    _, kind, opts = _widget(spec)
    where = f"{node_type}.{name}={value!r}"
    options = kind if isinstance(kind, list) else opts.get("options")
    if options is not None or kind == "COMBO":
        assert isinstance(value, str), where
        if (node_type, name) not in FILE_LISTS:
            assert value in options, f"{where} is not one of {options}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
        assert opts.get("min", value) <= value <= opts.get("max", value), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        assert opts.get("min", value) <= value <= opts.get("max", value), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where


def to_api(workflow: dict, definitions: dict) -> dict:
    """UI format -> API format (what POST /prompt takes), for the nodes and features our workflows use."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):
            continue
        definition = definitions[node["type"]]
        inputs = _widget_values(node, definition)
        for slot in node["inputs"]:
            if slot.get("link") is not None:
                _, origin, origin_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(origin), origin_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def test_three_or_more_ui_workflows_are_shipped_and_nothing_else():
    assert len(WORKFLOWS) >= 3
    assert sorted(p.name for p in (REPO / "workflows").iterdir()) == sorted(p.name for p in WORKFLOWS)
    for path in WORKFLOWS:
        workflow = json.loads(path.read_text())
        assert {"nodes", "links", "version"} <= set(workflow), f"{path.name} is not in ComfyUI's UI format"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_nodes_widgets_and_links_are_valid(path, definitions):
    workflow = json.loads(path.read_text())
    nodes = {n["id"]: n for n in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]) and workflow["last_node_id"] >= max(nodes)
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in definitions, f"{path.name}: unknown node {node['type']}"
        definition = definitions[node["type"]]
        assert not definition.get("deprecated"), f"{path.name}: {node['type']} is deprecated"
        values = _widget_values(node, definition)
        linked = {s["name"] for s in node["inputs"] if s.get("link") is not None}
        for name, spec, required in _inputs_in_order(definition):
            if name in values and name not in linked:
                _check_value(node["type"], name, spec, values[name])
            elif required and name not in values:
                assert name in linked, f"{path.name}: {node['type']}.{name} is not connected"
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        out_type = definitions[nodes[origin]["type"]]["output"][origin_slot]
        target_input = nodes[target]["inputs"][target_slot]
        spec = dict((n, s) for n, s, _ in _inputs_in_order(definitions[nodes[target]["type"]]))[target_input["name"]]
        assert out_type == kind == spec[0], f"{path.name}: link {link_id} joins {out_type} to {spec[0]}"
        assert target_input["link"] == link_id
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_api_twin_matches_the_ui_workflow(path, definitions):
    twin = json.loads((HERE / "api" / f"{path.stem}.api.json").read_text())
    stripped = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in twin.items()}
    assert to_api(json.loads(path.read_text()), definitions) == stripped


def test_every_workflow_uses_a_gsasr_node_and_saves_its_result():
    for path in WORKFLOWS:
        types = {n["type"] for n in json.loads(path.read_text())["nodes"]}
        assert "LoadGSASRModel" in types and types & {"GSASRUpscale", "GSASRUpscaleToSize", "GSASRUpscaleModel"}, \
            path.name
        assert types & {"SaveImage", "SaveVideo"}, path.name
