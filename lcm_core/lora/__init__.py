"""LoRA formats, key mapping and the in-memory adapter representation."""
from .adapter import COMPONENTS, LoraAdapter, LoraModule

__all__ = ["COMPONENTS", "LoraAdapter", "LoraModule"]
