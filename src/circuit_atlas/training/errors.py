"""Error types raised by training when the user's input or settings are at fault.

They subclass `CircuitAtlasError`, so the CLI prints the message alone. They live here (not in
`circuit_atlas.errors`) because only training raises them; callers catch `CircuitAtlasError`.
"""

from __future__ import annotations

from circuit_atlas.errors import CircuitAtlasError


class TrainingConfigError(CircuitAtlasError):
    """An argument of a training run is out of range or inconsistent (names the argument)."""


class TrainingDataError(CircuitAtlasError):
    """The activation data cannot feed training (too few tokens, wrong shapes, bad cache)."""


class TrainingDivergedError(CircuitAtlasError):
    """The loss or gradients became NaN/inf; the message says which checkpoint is still good."""
