"""Fixtures: the pack loaded as ComfyUI loads it, against stand-in ComfyUI modules."""
from comfy_standins import comfy, core, load_pack, node_classes, pack, run_node  # noqa: F401 - pytest fixtures
