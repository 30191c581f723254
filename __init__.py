"""ComfyUI-GSASR: arbitrary-scale super-resolution nodes for ComfyUI (entry point only; see README.md).

Importing registers the models/gsasr folder and hands ComfyUI the V3 extension (``comfy_entrypoint``); nothing is
loaded, compiled or downloaded until a workflow runs. Inside a ComfyUI with the V3 API no ``NODE_CLASS_MAPPINGS``
is exported, on purpose: ComfyUI reads those first and would then never call ``comfy_entrypoint``.
"""
import logging
import sys

# ComfyUI has always imported folder_paths before it loads custom nodes. Without it this file is being imported
# by something else (pytest collects the repository root as a package): the nodes need ComfyUI, so none are
# offered (an empty mapping), and the core (`gsasr`) stays usable on its own.
if "folder_paths" not in sys.modules:
    NODE_CLASS_MAPPINGS: dict = {}
else:
    from .nodes import MIN_COMFYUI_VERSION, v3_api_available

    if v3_api_available():
        from .nodes import model_folder
        from .nodes.extension import comfy_entrypoint

        model_folder.register()
        __all__ = ["comfy_entrypoint"]
    else:
        # An empty mapping: ComfyUI lists the pack as loaded with no nodes and adds no warning of its own, so this
        # one line says what happened and what to do.
        NODE_CLASS_MAPPINGS = {}
        logging.getLogger(__name__).error(
            "ComfyUI-GSASR needs ComfyUI %s or newer (its nodes use the V3 node API); this ComfyUI is older, so the "
            "GSASR nodes are not loaded. Update ComfyUI and restart it.", MIN_COMFYUI_VERSION)
