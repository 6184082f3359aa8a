"""Attribution: direct effects between the nodes of a prompt's local replacement model."""

from circuit_atlas.attribution.attribute import attribute
from circuit_atlas.attribution.targets import CustomTarget, LogitDifference, LogitTargets

__all__ = ["attribute", "CustomTarget", "LogitDifference", "LogitTargets"]
