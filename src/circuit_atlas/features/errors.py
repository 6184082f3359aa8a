"""Error types of the feature-dashboard part."""

from __future__ import annotations

from circuit_atlas.errors import CircuitAtlasError


class FeatureStoreError(CircuitAtlasError):
    """A feature store is missing, was built with other settings, or a lookup is out of range."""


class FeatureBuildError(CircuitAtlasError):
    """Building a store stopped on bad input (the message says what the store still holds)."""
