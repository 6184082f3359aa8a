"""Language models with the hook and freeze points circuit tracing needs.

`load_language_model` / `LanguageModel.from_hf` wrap a transformers causal LM of a supported
family (one `FamilyAdapter` row of `adapters.ADAPTERS` each); `LanguageModel.forward` runs one
instrumented pass.
"""

from circuit_atlas.io.dtypes import resolve_dtype
from circuit_atlas.models.adapters import (
    ADAPTERS,
    ALL_HOOKS,
    INPUT_HOOKS,
    OUTPUT_HOOKS,
    ChatPrefix,
    FamilyAdapter,
    adapter_for_architecture,
    register_adapter,
    supported_architectures,
)
from circuit_atlas.models.freeze import ForwardRecord, FreezeSpec
from circuit_atlas.models.language_model import LanguageModel, load_language_model, unembedding_matrix
from circuit_atlas.models.prompts import Prompt

__all__ = [
    "ADAPTERS",
    "ALL_HOOKS",
    "INPUT_HOOKS",
    "OUTPUT_HOOKS",
    "ChatPrefix",
    "FamilyAdapter",
    "ForwardRecord",
    "FreezeSpec",
    "LanguageModel",
    "Prompt",
    "adapter_for_architecture",
    "load_language_model",
    "register_adapter",
    "resolve_dtype",
    "supported_architectures",
    "unembedding_matrix",
]
