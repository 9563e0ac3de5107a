"""Public adapter API: wrap a model with LoRA-SP, count what trains, save/load PEFT-format dirs."""

from __future__ import annotations

from lorasp_core.peft_format import (
    AdapterMetadata,
    TaskType,
    adapter_state_dict,
    load_adapter,
    read_adapter_metadata,
    save_adapter,
)
from lorasp_core.wrapping import (
    adapter_optimizer_state_entries,
    adapters_disabled,
    apply_lorasp,
    lorasp_config_of,
    lorasp_layers,
    merge_adapters,
    modules_to_save_of,
    optimizer_state_bytes,
    trainable_parameters,
    unmerge_adapters,
)

__all__ = [
    "AdapterMetadata",
    "TaskType",
    "adapter_optimizer_state_entries",
    "adapter_state_dict",
    "adapters_disabled",
    "apply_lorasp",
    "load_adapter",
    "lorasp_config_of",
    "lorasp_layers",
    "merge_adapters",
    "modules_to_save_of",
    "optimizer_state_bytes",
    "read_adapter_metadata",
    "save_adapter",
    "trainable_parameters",
    "unmerge_adapters",
]
