"""Error types for mistakes a user can make.

Every check on user input (files, shapes, prompts, arguments) raises one of these, so the CLI can
print the message alone instead of a traceback, and the Python API gives one class to catch.
"""

from __future__ import annotations


class CircuitAtlasError(Exception):
    """Base class: a problem with the user's input or environment, described in the message."""


class ModelLoadError(CircuitAtlasError):
    """A model could not be found or read."""


class UnsupportedArchitectureError(CircuitAtlasError):
    """The model's architecture has no family adapter."""


class TranscoderFormatError(CircuitAtlasError):
    """A transcoder file is missing, corrupt, or holds unexpected tensors."""


class ShapeMismatchError(CircuitAtlasError):
    """Tensor shapes do not fit each other or the model."""


class PromptError(CircuitAtlasError):
    """A prompt is empty, too long, or holds invalid token ids."""


class AttributionError(CircuitAtlasError):
    """Invalid attribution settings (targets, thresholds, node budgets)."""


class MemoryBudgetError(CircuitAtlasError):
    """The requested computation would not fit in the available memory."""


class InterventionError(CircuitAtlasError):
    """An intervention names a layer, position or feature that does not exist, or a bad value."""


class GraphFileError(CircuitAtlasError):
    """A graph directory or graph JSON file is missing, corrupt, or of an unknown format, or a
    graph name (slug) cannot be a file name."""


class AttentionError(AttributionError):
    """An attention explanation names a layer, head, position or node that does not exist, a key
    after its query (or outside a sliding window), or a graph traced with another model."""


class CircuitAtlasWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it as one
    `warning:` line)."""


class PromptWarning(CircuitAtlasWarning):
    """A prompt was tokenised, but not as written (words the vocabulary lacks)."""


class TranscoderFormatWarning(CircuitAtlasWarning):
    """A transcoder file is read, but something in it is ignored or overridden."""
