"""LoRA formats, key mapping and the in-memory adapter representation."""
from .adapter import COMPONENTS, LoraAdapter, LoraModule
from .io import FORMATS, adapter_from_state_dict, adapter_to_state_dict, read_adapter, write_adapter
from .keys import (
    LdmWeight,
    canonical_to_kohya,
    canonical_to_ldm,
    canonical_to_ldm_weight,
    kohya_to_canonical,
    ldm_to_canonical,
    module_name_in,
)

__all__ = [
    "COMPONENTS", "FORMATS", "LdmWeight", "LoraAdapter", "LoraModule",
    "adapter_from_state_dict", "adapter_to_state_dict", "canonical_to_kohya", "canonical_to_ldm",
    "canonical_to_ldm_weight", "kohya_to_canonical", "ldm_to_canonical", "module_name_in",
    "read_adapter", "write_adapter",
]
