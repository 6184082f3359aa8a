"""Per-family adapter table: where each family keeps the modules we hook, and its quirks.

Every supported family is one `FamilyAdapter` row in `ADAPTERS`: module paths, the norm classes
it uses (and how each computes), and quirks decided from the checkpoint itself (the chat prefix
of instruction-tuned Gemma-3). The rest of the model layer only talks to modules through a row,
so adding a family is one entry here plus its test (`tests/models/test_adapters.py` adds one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from circuit_atlas.errors import UnsupportedArchitectureError

# Block-relative TransformerLens hook names (`docs/formats.md` §3).
HOOK_RESID_MID = "hook_resid_mid"
HOOK_LN2_NORMALIZED = "ln2.hook_normalized"
HOOK_MLP_IN = "mlp.hook_in"
HOOK_MLP_OUT_RAW = "mlp.hook_out"
HOOK_MLP_OUT = "hook_mlp_out"

ALL_HOOKS = (HOOK_RESID_MID, HOOK_LN2_NORMALIZED, HOOK_MLP_IN, HOOK_MLP_OUT_RAW, HOOK_MLP_OUT)
# Where a transcoder may read (encoder input) and write (decoder target).
INPUT_HOOKS = (HOOK_RESID_MID, HOOK_LN2_NORMALIZED, HOOK_MLP_IN)
OUTPUT_HOOKS = (HOOK_MLP_OUT_RAW, HOOK_MLP_OUT)


# How a norm class computes (`models/norms.py`): Llama-style RMSNorm, Gemma's x·(1 + w) RMSNorm,
# and LayerNorm.
NORM_COMPUTATIONS = ("rms", "rms_one_plus", "layernorm")


@dataclass(frozen=True)
class ChatPrefix:
    """Instruction-tuned checkpoints of a family whose prompts must open with a fixed chat header.

    Those header positions carry no feature or error nodes (`docs/algorithm.md` §2). Whether a
    checkpoint is instruction-tuned is read from the checkpoint, not from its name: such
    checkpoints end generation at the end-of-turn token, so their generation config (or model
    config) lists `end_of_turn` among the eos ids. A local copy or a renamed folder therefore
    behaves like the hub original.
    """

    ids: tuple[int, ...]
    end_of_turn: int

    def applies_to(self, hf_model: nn.Module) -> bool:
        config = hf_model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        for source in (getattr(hf_model, "generation_config", None), config, text):
            eos = getattr(source, "eos_token_id", None)
            listed = eos if isinstance(eos, (list, tuple)) else (eos,)
            if self.end_of_turn in listed:
                return True
        return False


# <bos><start_of_turn>user\n, and <end_of_turn>, in Gemma-3's vocabulary.
GEMMA3_CHAT = ChatPrefix(ids=(2, 105, 2364, 107), end_of_turn=106)


@dataclass(frozen=True)
class FamilyAdapter:
    """One model family: module paths (dotted, relative to the `*ForCausalLM` module), norm
    classes, and quirks.

    `layer_*` paths are relative to one decoder layer. `post_mlp_norm` is set for families with a
    norm between the MLP and the residual add (Gemma-2/3); their `hook_mlp_out` is after it.
    `norms` maps each norm class name the family uses (pre/post-sublayer, final, q/k norms) to
    how it computes (`NORM_COMPUTATIONS`); a norm-like module of another class is refused, since
    its denominator could not be frozen. `chat_prefix`: see `ChatPrefix`.
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
    norms: Mapping[str, str] = field(default_factory=dict)
    position_embedding: str | None = None  # learned absolute positions added before layer 0 (GPT-2)
    # Attention explanations decompose the residual stream per head: the norm before attention,
    # the output projection (its input is the heads' outputs, concatenated head-major) and, for
    # families with one, the norm between attention and the residual add (Gemma-2/3).
    layer_pre_attention_norm: str = "input_layernorm"
    layer_attention_output: str = "self_attn.o_proj"
    layer_post_attention_norm: str | None = None
    # The value projection (its own linear map, `[KV·hd, d]`): attribution takes the first hop of a
    # feature row's backward pass in low-rank form through it (`models/frozen_hops.py`). None
    # for families that fuse it with the query and key projections (GPT-2's `c_attn`).
    layer_value_projection: str | None = "self_attn.v_proj"
    softcap_attr: str | None = None  # config attribute holding the final-logit soft-cap
    chat_prefix: ChatPrefix | None = None

    def __post_init__(self) -> None:
        unknown = {cls: how for cls, how in self.norms.items() if how not in NORM_COMPUTATIONS}
        if unknown:
            raise UnsupportedArchitectureError(
                f"family {self.family!r}: norm computation(s) {unknown} unknown; use one of "
                f"{', '.join(NORM_COMPUTATIONS)}"
            )

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

    def chat_prefix_of(self, hf_model: nn.Module) -> tuple[int, ...] | None:
        """The chat header this checkpoint's prompts must start with, or None."""
        if self.chat_prefix is not None and self.chat_prefix.applies_to(hf_model):
            return self.chat_prefix.ids
        return None


def _llama_like(family: str, architectures: tuple[str, ...], norm_class: str) -> FamilyAdapter:
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
        norms={norm_class: "rms"},
    )


def _gemma_like(family: str, architectures: tuple[str, ...], norm_class: str, base: str = "model",
                softcap_attr: str | None = "final_logit_softcapping",
                chat_prefix: ChatPrefix | None = None) -> FamilyAdapter:
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
        norms={norm_class: "rms_one_plus"},
        layer_post_attention_norm="post_attention_layernorm",
        softcap_attr=softcap_attr,
        chat_prefix=chat_prefix,
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
        norms={"LayerNorm": "layernorm"},
        layer_pre_attention_norm="ln_1",
        layer_attention_output="attn.c_proj",
        layer_value_projection=None,
    ),
    "llama": _llama_like("llama", ("LlamaForCausalLM",), "LlamaRMSNorm"),
    "mistral": _llama_like("mistral", ("MistralForCausalLM",), "MistralRMSNorm"),
    "qwen2": _llama_like("qwen2", ("Qwen2ForCausalLM",), "Qwen2RMSNorm"),
    "qwen3": _llama_like("qwen3", ("Qwen3ForCausalLM",), "Qwen3RMSNorm"),
    "gemma2": _gemma_like("gemma2", ("Gemma2ForCausalLM",), "Gemma2RMSNorm"),
    "gemma3": _gemma_like("gemma3", ("Gemma3ForCausalLM",), "Gemma3RMSNorm",
                          chat_prefix=GEMMA3_CHAT),
    # Gemma-3 4B and larger ship as image-text models; we use the text tower only. Transformers
    # applies no final soft-cap in this class's forward, so none is declared.
    "gemma3_multimodal": _gemma_like(
        "gemma3_multimodal", ("Gemma3ForConditionalGeneration",), "Gemma3RMSNorm",
        base="model.language_model", softcap_attr=None, chat_prefix=GEMMA3_CHAT,
    ),
}


def register_adapter(adapter: FamilyAdapter) -> FamilyAdapter:
    """Add a family (or replace the row of the same name): the one step that supports a new
    architecture whose modules fit a `FamilyAdapter`."""
    ADAPTERS[adapter.family] = adapter
    return adapter


def _by_architecture() -> dict[str, FamilyAdapter]:
    return {arch: a for a in ADAPTERS.values() for arch in a.architectures}


def supported_architectures() -> list[str]:
    return sorted(_by_architecture())


def adapter_for_architecture(architecture: str) -> FamilyAdapter:
    """Look up the adapter for a transformers class name such as `LlamaForCausalLM`."""
    adapter = _by_architecture().get(architecture)
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
