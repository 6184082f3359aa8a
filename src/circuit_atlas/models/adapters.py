"""Per-family adapter table: where each family keeps the modules we hook.

Every supported family is one `FamilyAdapter` row. The rest of the model layer only talks to
modules through these paths, so adding a family that follows an existing layout is a few lines
here (plus a norm class in `norms.NORM_KINDS` if it brings a new norm class).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from circuit_atlas.errors import UnsupportedArchitectureError

# Block-relative TransformerLens hook names (reference transcoder-formats.md §3).
HOOK_RESID_MID = "hook_resid_mid"
HOOK_LN2_NORMALIZED = "ln2.hook_normalized"
HOOK_MLP_IN = "mlp.hook_in"
HOOK_MLP_OUT_RAW = "mlp.hook_out"
HOOK_MLP_OUT = "hook_mlp_out"

ALL_HOOKS = (HOOK_RESID_MID, HOOK_LN2_NORMALIZED, HOOK_MLP_IN, HOOK_MLP_OUT_RAW, HOOK_MLP_OUT)
# Where a transcoder may read (encoder input) and write (decoder target).
INPUT_HOOKS = (HOOK_RESID_MID, HOOK_LN2_NORMALIZED, HOOK_MLP_IN)
OUTPUT_HOOKS = (HOOK_MLP_OUT_RAW, HOOK_MLP_OUT)


@dataclass(frozen=True)
class FamilyAdapter:
    """Module paths of one model family (dotted, relative to the `*ForCausalLM` module).

    `layer_*` paths are relative to one decoder layer. `post_mlp_norm` is set for families with a
    norm between the MLP and the residual add (Gemma-2/3); their `hook_mlp_out` is after it.
    """

    family: str
    architectures: tuple[str, ...]
    base: str  # the decoder stack without the LM head (returns last_hidden_state)
    layers: str
    embed_tokens: str
    final_norm: str
    lm_head: str
    layer_attention: str
    layer_pre_mlp_norm: str
    layer_mlp: str
    layer_post_mlp_norm: str | None = None
    position_embedding: str | None = None  # learned absolute positions added before layer 0 (GPT-2)
    # Attention explanations decompose the residual stream per head: the norm before attention,
    # the output projection (its input is the heads' outputs, concatenated head-major) and, for
    # families with one, the norm between attention and the residual add (Gemma-2/3).
    layer_pre_attention_norm: str = "input_layernorm"
    layer_attention_output: str = "self_attn.o_proj"
    layer_post_attention_norm: str | None = None
    norm_kind: str = "rms"  # "rms" | "rms_one_plus" (Gemma's x·(1+w)) | "layernorm"
    softcap_attr: str | None = None  # config attribute holding the final-logit soft-cap

    # --- module access -------------------------------------------------------------------------
    def get(self, hf_model: nn.Module, path: str) -> nn.Module:
        """Resolve a dotted path under `hf_model`.

        A checkpoint of a supported class can still lack a module we hook (a modified or newer
        variant of the architecture); torch would raise a bare AttributeError from deep inside a
        pass, so the lookup names the family, the missing path and the class that lacks it.
        """
        return self._resolve(hf_model, path, type(hf_model).__name__, path)

    def layer_modules(self, hf_model: nn.Module) -> nn.ModuleList:
        layers = self.get(hf_model, self.layers)
        if not isinstance(layers, nn.ModuleList):
            raise UnsupportedArchitectureError(
                f"{type(hf_model).__name__} does not have the {self.family!r} family layout: "
                f"{self.layers!r} should be the list of decoder layers but is a "
                f"{type(layers).__name__}"
            )
        return layers

    def layer_part(self, hf_model: nn.Module, layer: int, part: str) -> nn.Module:
        return self._resolve(self.layer_modules(hf_model)[layer], part, type(hf_model).__name__,
                             f"{self.layers}.{layer}.{part}")

    def check_modules(self, hf_model: nn.Module) -> None:
        """Resolve every path this adapter names (all layers), so a model missing one fails when
        it is wrapped rather than in the middle of a forward pass."""
        for path in (self.base, self.embed_tokens, self.final_norm, self.lm_head,
                     self.position_embedding):
            if path is not None:
                self.get(hf_model, path)
        parts = (self.layer_attention, self.layer_pre_mlp_norm, self.layer_mlp,
                 self.layer_post_mlp_norm)
        for layer in range(len(self.layer_modules(hf_model))):
            for part in parts:
                if part is not None:
                    self.layer_part(hf_model, layer, part)

    def _resolve(self, root: nn.Module, path: str, model_class: str, shown: str) -> nn.Module:
        """Walk `path` from `root`; `shown` is the full path from the model, for the message."""
        module = root
        for name in path.split("."):
            child = getattr(module, name, None) if name else None
            if not isinstance(child, nn.Module):
                what = "has no submodule" if child is None else "has a non-module attribute"
                raise UnsupportedArchitectureError(
                    f"{model_class} does not have the {self.family!r} family layout that "
                    f"circuit-atlas expects: module {shown!r} is missing ({type(module).__name__} "
                    f"{what} {name!r}). A modified or newer variant of this architecture needs "
                    "its own FamilyAdapter row in circuit_atlas/models/adapters.py"
                )
            module = child
        return module

    def embedding_scale(self, hf_model: nn.Module) -> float:
        """Factor the family multiplies token embeddings by (√d for Gemma, else 1).

        Transformers applies it inside the embedding module for Gemma-2/3, so calling the module
        already gives the scaled value; this is only reported for documentation and dashboards.
        """
        scale = getattr(self.get(hf_model, self.embed_tokens), "embed_scale", None)
        if scale is None:
            return 1.0
        return float(scale) if not isinstance(scale, torch.Tensor) else float(scale.item())

    def final_softcap(self, config) -> float | None:
        if self.softcap_attr is None:
            return None
        value = getattr(config, self.softcap_attr, None)
        return float(value) if value else None

    def supported_hooks(self) -> tuple[str, ...]:
        return ALL_HOOKS


def _llama_like(family: str, architectures: tuple[str, ...]) -> FamilyAdapter:
    """Llama layout: input_layernorm → attn → post_attention_layernorm (pre-MLP) → mlp."""
    return FamilyAdapter(
        family=family,
        architectures=architectures,
        base="model",
        layers="model.layers",
        embed_tokens="model.embed_tokens",
        final_norm="model.norm",
        lm_head="lm_head",
        layer_attention="self_attn",
        layer_pre_mlp_norm="post_attention_layernorm",
        layer_mlp="mlp",
    )


def _gemma_like(family: str, architectures: tuple[str, ...], base: str = "model",
                softcap_attr: str | None = "final_logit_softcapping") -> FamilyAdapter:
    """Gemma layout: sandwich norms; pre_feedforward_layernorm feeds the MLP, post_* follows it."""
    return FamilyAdapter(
        family=family,
        architectures=architectures,
        base=base,
        layers=f"{base}.layers",
        embed_tokens=f"{base}.embed_tokens",
        final_norm=f"{base}.norm",
        lm_head="lm_head",
        layer_attention="self_attn",
        layer_pre_mlp_norm="pre_feedforward_layernorm",
        layer_mlp="mlp",
        layer_post_mlp_norm="post_feedforward_layernorm",
        layer_post_attention_norm="post_attention_layernorm",
        norm_kind="rms_one_plus",
        softcap_attr=softcap_attr,
    )


ADAPTERS: dict[str, FamilyAdapter] = {
    "gpt2": FamilyAdapter(
        family="gpt2",
        architectures=("GPT2LMHeadModel",),
        base="transformer",
        layers="transformer.h",
        embed_tokens="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        layer_attention="attn",
        layer_pre_mlp_norm="ln_2",
        layer_mlp="mlp",
        position_embedding="transformer.wpe",
        layer_pre_attention_norm="ln_1",
        layer_attention_output="attn.c_proj",
        norm_kind="layernorm",
    ),
    "llama": _llama_like("llama", ("LlamaForCausalLM",)),
    "mistral": _llama_like("mistral", ("MistralForCausalLM",)),
    "qwen2": _llama_like("qwen2", ("Qwen2ForCausalLM",)),
    "qwen3": _llama_like("qwen3", ("Qwen3ForCausalLM",)),
    "gemma2": _gemma_like("gemma2", ("Gemma2ForCausalLM",)),
    "gemma3": _gemma_like("gemma3", ("Gemma3ForCausalLM",)),
    # Gemma-3 4B and larger ship as image-text models; we use the text tower only. Transformers
    # applies no final soft-cap in this class's forward, so none is declared.
    "gemma3_multimodal": _gemma_like(
        "gemma3_multimodal", ("Gemma3ForConditionalGeneration",), base="model.language_model",
        softcap_attr=None,
    ),
}

_BY_ARCHITECTURE = {arch: a for a in ADAPTERS.values() for arch in a.architectures}


def supported_architectures() -> list[str]:
    return sorted(_BY_ARCHITECTURE)


def adapter_for_architecture(architecture: str) -> FamilyAdapter:
    """Look up the adapter for a transformers class name such as `LlamaForCausalLM`."""
    adapter = _BY_ARCHITECTURE.get(architecture)
    if adapter is None:
        raise UnsupportedArchitectureError(
            f"architecture {architecture!r} is not supported; supported architectures: "
            f"{', '.join(supported_architectures())}"
        )
    return adapter


def adapter_for_family(family: str) -> FamilyAdapter:
    adapter = ADAPTERS.get(family)
    if adapter is None:
        raise UnsupportedArchitectureError(
            f"model family {family!r} is not supported; supported families: {', '.join(sorted(ADAPTERS))}"
        )
    return adapter
