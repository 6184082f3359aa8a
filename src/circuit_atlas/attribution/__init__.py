"""Attribution: direct effects between the nodes of a prompt's local replacement model, and
explanations of the attention those effects run through (per-head edges, QK attribution)."""

from circuit_atlas.attribution.attribute import attribute
from circuit_atlas.attribution.graph_attention import explain_graph_attention
from circuit_atlas.attribution.heads import EdgeHeads, HeadAttributor, HeadWeight, edge_heads
from circuit_atlas.attribution.qk import QKAttribution, QKExplainer, Term, qk_attribution
from circuit_atlas.attribution.targets import CustomTarget, LogitDifference, LogitTargets

__all__ = ["attribute", "CustomTarget", "EdgeHeads", "HeadAttributor", "HeadWeight",
           "LogitDifference", "LogitTargets", "QKAttribution", "QKExplainer", "Term", "edge_heads",
           "explain_graph_attention", "qk_attribution"]
