"""Interventions on transcoder features: test the hypotheses a graph suggests.

- `intervene(model, prompt, interventions, mode="free" | "constrained")`: one intervened pass next
  to the clean one (new logits, top tokens, changed feature activations).
- `generate(model, prompt, interventions, max_new_tokens)`: default and steered continuations.
- `validate_graph(model, graph, nodes)`: the graph's predicted effects against actual ablations.

An `Intervention` sets (`value`), scales (`scale`) or ablates (`ablate=True`) features of one layer
at some positions; a `Supernode` applies one operation to several features.
"""

from circuit_atlas.interventions.generate import Continuation, GenerationResult, generate
from circuit_atlas.interventions.intervene import (
    MODES,
    FeatureChanges,
    InterventionResult,
    Mode,
    TokenProb,
    intervene,
)
from circuit_atlas.interventions.spec import Intervention, Supernode
from circuit_atlas.interventions.validate import NodeValidation, ValidationReport, validate_graph

__all__ = [
    "Continuation",
    "FeatureChanges",
    "GenerationResult",
    "Intervention",
    "InterventionResult",
    "MODES",
    "Mode",
    "NodeValidation",
    "Supernode",
    "TokenProb",
    "ValidationReport",
    "generate",
    "intervene",
    "validate_graph",
]
