"""The pack loaded the way ComfyUI loads it, with stand-ins for the few ComfyUI modules the nodes use.

ComfyUI is not installed in CI, so `folder_paths`, `comfy.utils` and `comfy.model_management` are replaced by
small modules with the same names, signatures and behaviour for what the nodes call (checked against ComfyUI
v0.33.0; the real thing runs in tests/workflows/test_real_comfyui.py when a ComfyUI checkout is configured).
The conftest.py of tests/nodes and tests/workflows import these fixtures.
The pack is imported from its root `__init__.py` under an alias package, as ComfyUI does (never `import nodes`:
ComfyUI owns that name).
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PACK_ALIAS = "comfyui_gsasr_under_test"


class InterruptProcessingException(BaseException):
    """Like ComfyUI's: a BaseException, so `except Exception` blocks do not swallow Cancel."""


class FakeComfy:
    """State behind the stand-in modules: folders, progress updates seen, a Cancel switch, device moves."""

    def __init__(self, models_dir: Path):
        self.models_dir = models_dir
        self.progress: list[tuple[int, int]] = []
        self.cancel_after_checks: int | None = None  # press Cancel after this many interrupt checks
        self.interrupt_checks = 0
        self.freed: list[int] = []
        self.intermediate_dtype = torch.float32
        self.folder_names_and_paths: dict[str, tuple[list[str], set]] = {}

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
        mm.free_memory = lambda memory_required, device, keep_loaded=(): fake.freed.append(memory_required)
        mm.soft_empty_cache = lambda force=False: None
        mm.throw_exception_if_processing_interrupted = fake.check_interrupt

        comfy = types.ModuleType("comfy")
        comfy.utils, comfy.model_management = utils, mm
        return {"folder_paths": folder_paths, "comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm}

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


@pytest.fixture
def run_node(pack):
    """``run_node(node_id, **inputs)`` executes a node as ComfyUI does (``getattr(instance, FUNCTION)(**inputs)``)
    and returns its output tuple."""
    def run(node_id: str, **inputs):
        cls = pack.NODE_CLASS_MAPPINGS[node_id]
        return getattr(cls(), cls.FUNCTION)(**inputs)

    return run


@pytest.fixture
def core(pack):
    """The pack's own copy of the core (its exception classes are the ones the nodes raise)."""
    return sys.modules[PACK_ALIAS + ".gsasr"]
