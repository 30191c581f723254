"""The pack loaded the way ComfyUI loads it, with stand-ins for the few ComfyUI modules the nodes use.

ComfyUI is not installed in CI, so `folder_paths`, `comfy.utils`, `comfy.model_management`, `comfy.model_patcher`
and `comfy_api.latest` (the V3 node API) are replaced by small modules with the same names, signatures and
behaviour for what the nodes call (checked against ComfyUI v0.33.0; the real thing runs in
tests/workflows/test_real_comfyui.py when a ComfyUI checkout is configured). The V3 stand-in serves node
definitions in /object_info's shape; the model manager keeps ComfyUI's list of loaded models, loads and unloads
patchers and, with ``vram_bytes`` set, accounts the load device as a GPU of that size (CI has no GPU: the tensors
stay on the CPU) so that eviction happens as ComfyUI decides it.
The conftest.py of tests/nodes and tests/workflows import these fixtures.
The pack is imported from its root `__init__.py` under an alias package, as ComfyUI does (never `import nodes`:
ComfyUI owns that name).
"""
from __future__ import annotations

import asyncio
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PACK_ALIAS = "comfyui_gsasr_under_test"


class InterruptProcessingException(BaseException):
    """Like ComfyUI's: a BaseException, so `except Exception` blocks do not swallow Cancel."""


# ------------------------------------------------------------------ comfy_api.latest: the V3 node API

_INPUT_OPTIONS = {"display_name", "optional", "tooltip", "lazy", "extra_dict", "raw_link", "advanced"}
_WIDGET_OPTIONS = _INPUT_OPTIONS | {"default", "socketless", "force_input"}
_V1_NAMES = {"raw_link": "rawLink", "force_input": "forceInput", "display_mode": "display"}
"""The V1 (/object_info) spelling of the keyword arguments that are spelt differently there."""


def _socket_type(io_type: str, input_options: set[str] = _INPUT_OPTIONS, always: dict | None = None) -> type:
    """A V3 type (``io.Image``, ``io.Custom("X")`` ...): ``.Input(id, ...)`` and ``.Output(...)`` declare sockets and
    widgets. Like the real classes, an Input takes only the keyword arguments its type has (a typo is a TypeError);
    ``always``: options /object_info lists for every input of the type (a combo's ``multiselect: false``)."""

    class Input:
        def __init__(self, id: str, **options):
            unknown = set(options) - input_options
            if unknown:
                raise TypeError(f"{io_type}.Input got unexpected keyword arguments {sorted(unknown)}")
            self.id, self.io_type = id, io_type
            self.optional = options.pop("optional", False)
            self.options = options

        def v1(self) -> tuple[str, dict]:
            """(type, options) as /object_info lists an input: options that are None are left out."""
            extra = self.options.get("extra_dict") or {}
            opts = {_V1_NAMES.get(k, k): v for k, v in self.options.items() if v is not None and k != "extra_dict"}
            return self.io_type, {**opts, **(always or {}), **extra}

    class Output:
        def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                     is_output_list: bool = False):
            self.id, self.io_type, self.tooltip, self.is_output_list = id, io_type, tooltip, is_output_list
            self.display_name = display_name or id

    return type(f"ComfyType_{io_type}", (), {"io_type": io_type, "Input": Input, "Output": Output})


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    search_aliases: list[str] = field(default_factory=list)
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_dev_only: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False

    def validate(self) -> None:
        for kind, ids in (("Input", [i.id for i in self.inputs]), ("Output", [o.id for o in self.outputs if o.id])):
            if len(set(ids)) != len(ids):
                raise ValueError(f"{kind} ids must be unique: {ids}")


class NodeOutput:
    def __init__(self, *args, ui=None, expand=None, block_execution=None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if self.args else None


class ComfyNode:
    """Base of V3 nodes: classmethods only; ComfyUI calls ``execute(**inputs)`` on the class. The methods a node
    must (define_schema, execute) or may (fingerprint_inputs) override raise NotImplementedError, as in ComfyUI's
    own ``io.ComfyNode``, so a node that forgets one fails here as it would there."""

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.validate()
        return schema

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict:
        """The node's entry in /object_info."""
        schema = cls.GET_SCHEMA()
        inputs: dict[str, dict] = {"required": {}}
        for i in schema.inputs:
            inputs.setdefault("optional" if i.optional else "required", {})[i.id] = i.v1()
        return {
            "input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
            "output": [o.io_type for o in schema.outputs],
            "output_is_list": [o.is_output_list for o in schema.outputs],
            "output_name": [o.display_name or o.io_type for o in schema.outputs],
            "output_tooltips": [o.tooltip for o in schema.outputs],
            "name": schema.node_id, "display_name": schema.display_name, "description": schema.description,
            "category": schema.category, "output_node": schema.is_output_node,
            "deprecated": schema.is_deprecated, "experimental": schema.is_experimental,
            "search_aliases": schema.search_aliases or None,
        }

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return cls.GET_NODE_INFO_V1()["input"]


class ComfyExtension:
    async def on_load(self) -> None:
        pass

    async def get_node_list(self) -> list:
        raise NotImplementedError  # abstract in ComfyUI too: every extension lists its nodes


def _v3_modules() -> dict[str, types.ModuleType]:
    io = types.ModuleType("comfy_api.latest._io_public")
    io.Schema, io.NodeOutput, io.ComfyNode = Schema, NodeOutput, ComfyNode
    io.Custom = _socket_type
    io.Image = _socket_type("IMAGE")
    io.UpscaleModel = _socket_type("UPSCALE_MODEL")
    io.Int = _socket_type("INT", _WIDGET_OPTIONS | {"min", "max", "step", "control_after_generate",
                                                    "display_mode"})
    io.Float = _socket_type("FLOAT", _WIDGET_OPTIONS | {"min", "max", "step", "round", "display_mode",
                                                        "gradient_stops"})
    io.Combo = _socket_type("COMBO", _WIDGET_OPTIONS | {"options", "control_after_generate", "upload",
                                                        "image_folder", "remote"}, always={"multiselect": False})
    latest = types.ModuleType("comfy_api.latest")
    latest.io, latest.ComfyExtension = io, ComfyExtension
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.latest = latest
    return {"comfy_api": comfy_api, "comfy_api.latest": latest}


# ------------------------------------------------------------------ comfy.model_patcher / model_management

class ModelPatcher:
    """Holds a module for the model manager; keeps its bookkeeping as attributes of that module, as ComfyUI's does
    (``device``, ``model_loaded_weight_memory``, ``model_lowvram``)."""

    def __init__(self, model: torch.nn.Module, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
        if getattr(model, "device", None) is None:
            model.device = offload_device
        model.model_loaded_weight_memory = 0
        model.model_lowvram = False

    def model_size(self) -> int:
        if self.size <= 0:
            self.size = sum(t.nbytes for t in self.model.state_dict().values())
        return self.size

    def loaded_size(self) -> int:
        return self.model.model_loaded_weight_memory

    def current_loaded_device(self):
        return self.model.device

    def is_dynamic(self) -> bool:
        return False

    def load_fully(self, device) -> None:
        self.model.to(device)
        self.model.device = device
        self.model.model_loaded_weight_memory = self.model_size()

    def detach(self, unpatch_all=True):
        self.model.to(self.offload_device)
        self.model.device = self.offload_device
        self.model.model_loaded_weight_memory = 0
        return self.model


class LoadedModel:
    def __init__(self, patcher: ModelPatcher):
        self.model, self.device, self.currently_used = patcher, patcher.load_device, True


class FakeComfy:
    """State behind the stand-in modules: folders, progress updates seen, a Cancel switch, the model manager."""

    def __init__(self, models_dir: Path):
        self.models_dir = models_dir
        self.progress: list[tuple[int, int]] = []
        self.cancel_after_checks: int | None = None  # press Cancel after this many interrupt checks
        self.interrupt_checks = 0
        self.intermediate_dtype = torch.float32
        self.folder_names_and_paths: dict[str, tuple[list[str], set]] = {}
        self.current_loaded_models: list[LoadedModel] = []
        self.load_calls: list[dict] = []   # the arguments of every load_models_gpu call
        self.vram_bytes: int | None = None  # set: the load device is accounted as a GPU of this size
        self.reserved_bytes = 400 * 2**20   # ComfyUI's EXTRA_RESERVED_VRAM on Linux

    # -------- the model manager (ComfyUI's rules: newest first, unload the least recently used until it fits)

    def loaded_models(self, only_currently_used=False) -> list[ModelPatcher]:
        return [m.model for m in self.current_loaded_models if m.currently_used or not only_currently_used]

    def free_bytes(self, device) -> float:
        used = sum(m.model.loaded_size() for m in self.current_loaded_models if m.device == device)
        return self.vram_bytes - used

    def free_memory(self, memory_required, device, keep_loaded=()) -> list[LoadedModel]:
        unloaded = []
        for loaded in reversed(list(self.current_loaded_models)):  # the least recently loaded first
            if loaded.device != device or any(loaded.model is k.model for k in keep_loaded):
                continue
            if self.vram_bytes is None or self.free_bytes(device) < memory_required:
                loaded.model.detach()
                self.current_loaded_models.remove(loaded)
                unloaded.append(loaded)
        return unloaded

    def load_models_gpu(self, models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False) -> None:
        self.load_calls.append({"models": list(models), "memory_required": memory_required,
                                "force_full_load": force_full_load})
        for patcher in models:
            loaded = next((m for m in self.current_loaded_models if m.model is patcher), None)
            if loaded is not None:
                self.current_loaded_models.remove(loaded)
                loaded.currently_used = True
            else:
                loaded = LoadedModel(patcher)
            if self.vram_bytes is not None:  # ComfyUI frees nothing for a CPU load device
                missing = patcher.model_size() - patcher.loaded_size()
                needed = missing + max(memory_required + self.reserved_bytes, 0.8 * 2**30 + self.reserved_bytes)
                self.free_memory(needed, loaded.device, keep_loaded=[loaded])
            patcher.load_fully(patcher.load_device)
            self.current_loaded_models.insert(0, loaded)

    def unload_all_models(self) -> None:
        self.free_memory(1e30, torch.device("cpu"))

    # -------- the modules

    def modules(self) -> dict[str, types.ModuleType]:
        fake = self
        folder_paths = types.ModuleType("folder_paths")
        folder_paths.models_dir = str(self.models_dir)
        folder_paths.folder_names_and_paths = self.folder_names_and_paths

        def add_model_folder_path(folder_name, full_folder_path, is_default=False):
            paths, _ = fake.folder_names_and_paths.setdefault(folder_name, ([], set()))
            if full_folder_path in paths:
                paths.remove(full_folder_path)
            paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)

        folder_paths.add_model_folder_path = add_model_folder_path
        folder_paths.get_folder_paths = lambda name: fake.folder_names_and_paths[name][0][:]

        utils = types.ModuleType("comfy.utils")

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total, self.current = total, 0

            def update_absolute(self, value, total=None, preview=None):
                if total is not None:
                    self.total = total
                self.current = min(value, self.total)
                fake.progress.append((self.current, self.total))
                fake.check_interrupt()  # the real hook checks for Cancel on every update

        utils.ProgressBar = ProgressBar

        mm = types.ModuleType("comfy.model_management")
        mm.InterruptProcessingException = InterruptProcessingException
        mm.get_torch_device = lambda: torch.device("cpu")
        mm.unet_offload_device = lambda: torch.device("cpu")
        mm.intermediate_device = lambda: torch.device("cpu")
        mm.intermediate_dtype = lambda: fake.intermediate_dtype
        mm.current_loaded_models = self.current_loaded_models
        mm.loaded_models = self.loaded_models
        mm.load_models_gpu = self.load_models_gpu
        mm.free_memory = self.free_memory
        mm.unload_all_models = self.unload_all_models
        mm.soft_empty_cache = lambda force=False: None
        mm.throw_exception_if_processing_interrupted = fake.check_interrupt

        patcher = types.ModuleType("comfy.model_patcher")
        patcher.ModelPatcher = patcher.CoreModelPatcher = ModelPatcher

        comfy = types.ModuleType("comfy")
        comfy.utils, comfy.model_management, comfy.model_patcher = utils, mm, patcher
        return {"folder_paths": folder_paths, "comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm,
                "comfy.model_patcher": patcher, **_v3_modules()}

    def check_interrupt(self) -> None:
        self.interrupt_checks += 1
        if self.cancel_after_checks is not None and self.interrupt_checks > self.cancel_after_checks:
            raise InterruptProcessingException()


def _load_pack() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(PACK_ALIAS, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_ALIAS] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def comfy(tmp_path: Path, monkeypatch) -> FakeComfy:
    """Stand-in ComfyUI modules, with an empty ComfyUI/models folder under tmp_path."""
    fake = FakeComfy(tmp_path / "ComfyUI" / "models")
    for name, module in fake.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    return fake


def _forget_pack() -> None:
    for name in [n for n in sys.modules if n == PACK_ALIAS or n.startswith(PACK_ALIAS + ".")]:
        del sys.modules[name]


@pytest.fixture
def load_pack(comfy: FakeComfy):
    """``load_pack()`` imports the pack afresh against the stand-ins (its model cache starts empty)."""
    def load():
        _forget_pack()
        return _load_pack()

    yield load
    _forget_pack()


@pytest.fixture
def pack(load_pack):
    """The pack's root module, as ComfyUI imports it."""
    return load_pack()


def node_classes_of(pack: types.ModuleType) -> dict[str, type]:
    """Node id -> class, the way ComfyUI v0.33 reads a pack: NODE_CLASS_MAPPINGS when it has them, otherwise the
    node list of the extension ``comfy_entrypoint()`` returns."""
    if getattr(pack, "NODE_CLASS_MAPPINGS", None) is not None:
        return dict(pack.NODE_CLASS_MAPPINGS)
    extension = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    asyncio.run(extension.on_load())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}


@pytest.fixture
def node_classes(pack) -> dict[str, type]:
    return node_classes_of(pack)


@pytest.fixture
def run_node(node_classes):
    """``run_node(node_id, **inputs)`` executes a V3 node as ComfyUI does (``cls.execute(**inputs)`` with every
    input of its schema, under ``torch.inference_mode()`` like ComfyUI's executor, so a model loaded by a node has
    inference-tensor weights) and returns its outputs as a tuple."""
    def run(node_id: str, **inputs):
        cls = node_classes[node_id]
        schema = cls.GET_SCHEMA()
        required = {i.id for i in schema.inputs if not i.optional}
        known = {i.id for i in schema.inputs}
        assert required <= set(inputs) <= known, f"{node_id}: inputs {sorted(inputs)}, schema {sorted(known)}"
        with torch.inference_mode():
            out = cls.execute(**inputs)
        assert isinstance(out, NodeOutput) and len(out.args) == len(schema.outputs)
        return out.args

    return run


@pytest.fixture
def core(pack):
    """The pack's own copy of the core (its exception classes are the ones the nodes raise)."""
    return sys.modules[PACK_ALIAS + ".gsasr"]
