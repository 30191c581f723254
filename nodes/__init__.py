"""ComfyUI nodes of ComfyUI-GSASR (ids are forever: workflows refer to them), written in ComfyUI's V3 node schema.

This file imports nothing of ComfyUI, so the pack's root can check the ComfyUI it runs in before importing the
nodes (:mod:`.extension`), and say what to do instead of failing with a traceback on an older ComfyUI.
"""

MIN_COMFYUI_VERSION = "0.11.0"
"""The first ComfyUI release whose V3 node API has everything the nodes use (``search_aliases`` came last)."""


def v3_api_available() -> bool:
    """Whether this ComfyUI has the V3 node API the nodes are written in."""
    try:
        from comfy_api.latest import io
    except ImportError:
        return False
    return "search_aliases" in getattr(io.Schema, "__dataclass_fields__", {})
