"""ComfyUI-GSASR: arbitrary-scale super-resolution nodes for ComfyUI (entry point only; see README.md).

Importing registers the models/gsasr folder and hands ComfyUI the node classes; nothing is loaded, compiled or
downloaded until a workflow runs.
"""
import sys

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

# ComfyUI has always imported folder_paths before it loads custom nodes. Without it this file is being imported
# by something else (pytest collects the repository root as a package): the nodes need ComfyUI, so none are
# offered, and the core (`gsasr`) stays usable on its own.
if "folder_paths" in sys.modules:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, model_folder

    model_folder.register()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
