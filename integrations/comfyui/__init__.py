"""IP-FaceDiff nodes for ComfyUI (classic node API). ComfyUI loads this folder from custom_nodes/;
the work is done by the ``ipfacediff`` package, which this pack depends on."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
