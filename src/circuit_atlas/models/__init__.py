"""Language models with the hook and freeze points circuit tracing needs.

`load_language_model` / `LanguageModel.from_hf` wrap a transformers causal LM of a supported
family (see `adapters.ADAPTERS`); `LanguageModel.forward` runs one instrumented pass.
"""

from circuit_atlas.models.adapters import (
    ADAPTERS,
    ALL_HOOKS,
    INPUT_HOOKS,
    OUTPUT_HOOKS,
    FamilyAdapter,
    adapter_for_architecture,
    supported_architectures,
)
from circuit_atlas.models.freeze import ForwardRecord, FreezeSpec
from circuit_atlas.models.language_model import LanguageModel, load_language_model, resolve_dtype

__all__ = [
    "ADAPTERS",
    "ALL_HOOKS",
    "INPUT_HOOKS",
    "OUTPUT_HOOKS",
    "FamilyAdapter",
    "ForwardRecord",
    "FreezeSpec",
    "LanguageModel",
    "adapter_for_architecture",
    "load_language_model",
    "resolve_dtype",
    "supported_architectures",
]
