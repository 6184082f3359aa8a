"""`LanguageModel`: a transformers causal LM plus its family adapter, hook and freeze points."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import nn

from circuit_atlas.errors import CircuitAtlasError, ModelLoadError, UnsupportedArchitectureError
from circuit_atlas.io.dtypes import resolve_dtype
from circuit_atlas.io.presets import model_preset
from circuit_atlas.models import adapters as A
from circuit_atlas.models.adapters import FamilyAdapter, adapter_for_architecture
from circuit_atlas.models.attention import use_attention
from circuit_atlas.models.forward import EmbeddingEdit, OutputEdit, _Pass
from circuit_atlas.models.freeze import ForwardRecord, FreezeSpec
from circuit_atlas.models.norms import find_norms
from circuit_atlas.models.placement import (
    OFFLOAD_TARGETS,
    DeviceMap,
    check_tied_placement,
    execution_device,
    is_dispatched,
    loaded_weights,
    parse_device_map,
    require_accelerate,
    uses_disk,
)
from circuit_atlas.models.prompts import Prompt, to_ids
from circuit_atlas.models.token_text import token_display_strings


def unembedding_matrix(hf_model: nn.Module) -> torch.Tensor:
    """The `[V, d]` unembedding (LM head) weight of a transformers causal LM: row `v` is token
    `v`'s output direction. The one definition logit targets, dashboards and validation use."""
    head = hf_model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise UnsupportedArchitectureError(
            f"{type(hf_model).__name__} has no output embedding (lm_head) weight, so logits cannot "
            "be attributed"
        )
    if weight.is_meta:  # offloaded by a device_map: read a copy while accelerate has it loaded
        with loaded_weights(head):
            return head.weight.detach().clone()
    return weight

def available_devices() -> list[str]:
    """Devices this process can use, for error messages: cpu, then each CUDA GPU, then mps."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(device: str | torch.device | None, what: str = "device") -> torch.device | None:
    """Parse `device` and make sure it exists here, before any weights are read.

    Torch only notices a missing GPU when the first tensor moves (an AssertionError deep inside
    `torch.cuda`), and an unknown name raises a RuntimeError listing torch's internal backends;
    this names the device the user gave and the ones that would work instead. `what` names the
    argument in the message (the CLI passes "--device").
    """
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(
            f"{what} {str(device)!r} is not a device name; use cpu, cuda, cuda:N or mps "
            f"(available here: {', '.join(available_devices())})"
        ) from None
    available = available_devices()
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this PyTorch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible to this process")
            raise ModelLoadError(
                f"{what} {str(device)!r} is not available: {why} (available here: "
                f"{', '.join(available)})"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"{what} {str(device)!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA GPU(s) (available here: {', '.join(available)})"
            )
        return parsed
    if parsed.type == "mps":
        if "mps" not in available:
            raise ModelLoadError(
                f"{what} {str(device)!r} is not available: no Apple MPS backend here "
                f"(available here: {', '.join(available)})"
            )
        return parsed
    raise ModelLoadError(
        f"{what} {str(device)!r} is not supported; use cpu, cuda, cuda:N or mps "
        f"(available here: {', '.join(available)})"
    )


class LanguageModel:
    """A transformers `*ForCausalLM` with the hooks circuit tracing needs.

    Parameters are frozen (`requires_grad=False`) and the model is put in eval mode: we only
    ever differentiate with respect to activations, and this keeps autograd graphs small.
    """

    def __init__(self, hf_model: nn.Module, tokenizer, name: str, adapter: FamilyAdapter) -> None:
        adapter.check_modules(hf_model)  # a missing module fails here, naming its path
        self.hf_model = hf_model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.adapter = adapter
        self._norms = find_norms(hf_model, adapter.base, adapter.norms)
        # The chat header prompts must start with (instruction-tuned Gemma-3), read from the
        # checkpoint so that a local copy behaves like the hub original.
        self.chat_prefix = adapter.chat_prefix_of(hf_model)
        config = self.text_config
        self.n_layers = len(adapter.layer_modules(hf_model))
        self.d_model = int(config.hidden_size)
        self.vocab_size = int(adapter.get(hf_model, adapter.embed_tokens).weight.shape[0])
        self.max_positions = getattr(config, "max_position_embeddings", None)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_model: nn.Module, tokenizer, name: str) -> "LanguageModel":
        """Wrap an already built transformers model (tests, tiny models, custom loading)."""
        adapter = adapter_for_architecture(type(hf_model).__name__)
        return cls(hf_model, tokenizer, name, adapter)

    def to(self, device: str | torch.device | None = None,
           dtype: str | torch.dtype | None = None) -> "LanguageModel":
        """Move / cast the model in place and return self."""
        torch_dtype = resolve_dtype(dtype)
        device = check_device(device)
        if is_dispatched(self.hf_model) and (device is not None or torch_dtype is not None):
            raise ModelLoadError(
                f"model {self.name!r} was loaded with a device_map, which placed its layers; it "
                "cannot be moved or cast afterwards: load it again with the device_map and dtype "
                "you want"
            )
        if device is not None or torch_dtype is not None:
            self.hf_model.to(device=device, dtype=torch_dtype)
        return self

    def save(self, directory: str | os.PathLike) -> Path:
        """Write model (safetensors) and tokenizer so `load_language_model(directory)` reads them."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.hf_model.save_pretrained(path)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
        return path

    # --- properties ---------------------------------------------------------------------------
    @property
    def text_config(self):
        """The language model's config (the text sub-config of image-text models)."""
        config = self.hf_model.config
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    @property
    def device(self) -> torch.device:
        """Where tokens go in and results gather: the embeddings' device (the first device when
        a device_map spread the layers; their execution device when they were offloaded)."""
        return execution_device(self.adapter.get(self.hf_model, self.adapter.embed_tokens))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def n_zeroed_positions(self) -> int:
        """Leading positions without feature or error nodes (`docs/algorithm.md` §2.2): the
        chat header when the checkpoint requires one, else position 0."""
        return len(self.chat_prefix) if self.chat_prefix else 1

    @property
    def final_softcap(self) -> float | None:
        return self.adapter.final_softcap(self.text_config)

    @property
    def embedding_scale(self) -> float:
        return self.adapter.embedding_scale(self.hf_model)

    @property
    def norms(self) -> dict[str, tuple[nn.Module, str]]:
        """Every norm module of the decoder stack by full dotted path, with how it computes."""
        return self._norms

    def module(self, path: str) -> nn.Module:
        return self.adapter.get(self.hf_model, path)

    def layer_module(self, layer: int, part: str) -> nn.Module:
        return self.adapter.layer_part(self.hf_model, layer, part)

    @property
    def unembedding(self) -> torch.Tensor:
        """LM head weight `[V, d]` (rows are token output vectors)."""
        return unembedding_matrix(self.hf_model)

    # --- tokens ------------------------------------------------------------------------------
    def tokenize(self, prompt: Prompt) -> torch.Tensor:
        """Token ids `[P]` on the model's device; see `prompts.to_ids` for the BOS rule."""
        ids = to_ids(
            prompt,
            self.tokenizer,
            vocab_size=self.vocab_size,
            max_positions=self.max_positions,
            model_name=self.name,
            required_prefix=self.chat_prefix,
        )
        return ids.to(self.device)

    def token_strings(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """Each id as it reads inside running text (leading space kept; see `token_text`)."""
        ids = torch.as_tensor(ids).reshape(-1).tolist()
        if self.tokenizer is None:
            return [str(i) for i in ids]
        return token_display_strings(self.tokenizer, ids)

    def token_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """What each token adds to the residual stream through the token embedding (scale included,
        learned position embeddings excluded: those are constants of the linearised model)."""
        return self.module(self.adapter.embed_tokens)(tokens)

    # --- forward -----------------------------------------------------------------------------
    def check_hooks(self, input_hook: str, output_hook: str) -> None:
        if input_hook not in A.INPUT_HOOKS:
            raise UnsupportedArchitectureError(
                f"input hook {input_hook!r} is not supported for {self.family} models; "
                f"supported input hooks: {', '.join(A.INPUT_HOOKS)}"
            )
        if output_hook not in A.OUTPUT_HOOKS:
            raise UnsupportedArchitectureError(
                f"output hook {output_hook!r} is not supported for {self.family} models; "
                f"supported output hooks: {', '.join(A.OUTPUT_HOOKS)}"
            )

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        input_hook: str = A.HOOK_RESID_MID,
        output_hook: str = A.HOOK_MLP_OUT,
        freeze: FreezeSpec | None = None,
        output_edit: OutputEdit | None = None,
        embedding_edit: EmbeddingEdit | None = None,
        record_hooks: Sequence[str] = (),
        record_internals: bool = True,
        compute_logits: bool = True,
        mlp_values: Mapping[int, torch.Tensor] | None = None,
        attention_states: bool = False,
        record_residuals: bool = False,
    ) -> ForwardRecord:
        """One instrumented pass over `tokens [B,P]` (a 1-D `[P]` is treated as batch 1).

        Gradient mode is the caller's: wrap in `torch.no_grad()` for plain runs. `output_edit(
        layer, x_in, y_out) -> y_new` replaces the output-hook value (x_in is the input-hook value
        of the same layer and pass); `embedding_edit(emb) -> emb_new` replaces the residual stream
        entering layer 0. `record_hooks` names extra hook points to keep in `record.hooks`.
        `record_internals=False` skips keeping attention patterns and norm scales (memory);
        `compute_logits=False` stops at the final norm (no `[B,P,V]` logits tensor).
        `mlp_values[l]` (`[1 or B, P, d]`, the raw MLP output, i.e. `mlp.hook_out`) makes layer
        l's MLP return that value instead of running (hooks, edits and Gemma post-norms still
        apply); the frozen pass uses it, since no gradient flows through the MLPs anyway.
        """
        self.check_hooks(input_hook, output_hook)
        for name in record_hooks:
            if name not in A.ALL_HOOKS:
                raise UnsupportedArchitectureError(
                    f"hook {name!r} is unknown; known hooks: {', '.join(A.ALL_HOOKS)}"
                )
        if tokens.dim() == 1:
            tokens = tokens[None]
        tokens = tokens.to(self.device)
        run = _Pass(
            self.hf_model,
            self.adapter,
            self._norms,
            input_hook=input_hook,
            output_hook=output_hook,
            freeze=freeze or FreezeSpec(),
            output_edit=output_edit,
            embedding_edit=embedding_edit,
            record_hooks=record_hooks,
            record_internals=record_internals,
            mlp_values=mlp_values,
            attention_states=attention_states,
            record_residuals=record_residuals,
        )
        return run.run(tokens, compute_logits)

    __call__ = forward

    def cached_step(
        self,
        ids: torch.Tensor,
        cache: object | None = None,
        *,
        past_length: int = 0,
        input_hook: str = A.HOOK_RESID_MID,
        output_hook: str = A.HOOK_MLP_OUT,
        output_edit: OutputEdit | None = None,
    ) -> tuple[torch.Tensor, object]:
        """Logits `[V]` at the last of the new tokens `ids [p]`, continuing transformers' KV
        `cache` of the first `past_length` tokens (None and 0 to start), and the updated cache.

        Why: generation must not recompute the whole sequence for every token, yet steering needs
        the same hook points and `output_edit` as `forward`. The edit sees only the new
        positions; attention runs live (nothing frozen or recorded). transformers updates the
        cache in place: continue one sequence per cache.
        """
        self.check_hooks(input_hook, output_hook)
        if (cache is None) != (past_length == 0):
            raise CircuitAtlasError(
                f"cached_step: past_length={past_length} but "
                f"{'no cache was given' if cache is None else 'a cache was given'}; pass the cache "
                "returned by the previous step and the number of tokens it holds")
        hooks = _Pass(self.hf_model, self.adapter, self._norms, input_hook=input_hook,
                      output_hook=output_hook, freeze=FreezeSpec.live(), output_edit=output_edit)
        hooks.batch = 1
        kwargs = {"use_cache": True, "attention_mask": torch.ones(
            1, past_length + int(ids.shape[0]), dtype=torch.long, device=self.device)}
        if cache is not None:
            kwargs[self._cache_argument] = cache
        with ExitStack() as stack:
            hooks.install(stack)
            stack.enter_context(use_attention(self.hf_model, hooks))
            out = self.hf_model(input_ids=ids.reshape(1, -1).to(self.device), **kwargs)
        new_cache = out["cache"] if "cache" in out else out["past_key_values"]
        return out.logits[0, -1], new_cache

    @property
    def _cache_argument(self) -> str:
        """The keyword transformers' forward takes the KV cache under (renamed across versions)."""
        params = inspect.signature(self.hf_model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def __repr__(self) -> str:
        return (
            f"LanguageModel({self.name!r}, family={self.family}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, vocab_size={self.vocab_size})"
        )


def _looks_like_path(ref: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else (or an existing path) is a directory."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or "\\" in ref or os.path.exists(ref)


@contextmanager
def _quiet_weight_loading():
    """Hide transformers' per-shard "Loading weights" bar: small models load instantly and the bar
    clutters every command's output; large downloads still show huggingface_hub's own bars."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_language_model(
    ref: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: DeviceMap | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> LanguageModel:
    """Load a causal LM and its tokenizer from a local directory or a Hugging Face hub id
    (or a preset of `io.presets.MODEL_PRESETS`: `"demo"` is the bundled toy-world model).

    `device_map` spreads a model too large for one device with accelerate (installed with the
    `multi-gpu` extra): a strategy ("auto", "balanced", "balanced_low_0", "sequential") or a
    mapping of module paths to a GPU index, "cpu" or "disk" (the last two keep those weights in
    host memory or in `offload_folder` and bring them to the GPU for each pass). It replaces
    `device`: give one or the other (`docs/long-prompts.md`, "Models that do not fit one GPU").

    The model's `name` is `ref` exactly as given ("demo", a hub id, the path as typed): it is
    recorded in graphs and stores that get shared, so it must never become a path the user did
    not type (the package's install location, an expanded home folder)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    given = str(ref)
    ref = model_preset(given)
    torch_dtype = resolve_dtype(dtype)
    device = check_device(device)  # before reading anything: a missing GPU fails fast
    device_map = _check_device_map(device_map, device, offload_folder)
    if _looks_like_path(ref):
        ref = str(Path(ref).expanduser())
        if not Path(ref).is_dir():
            raise ModelLoadError(f"model directory {ref!r} does not exist")
    try:
        config = AutoConfig.from_pretrained(ref)
    except Exception as exc:  # transformers raises OSError/ValueError/HF errors here
        raise ModelLoadError(f"could not read the model config of {ref!r}: {exc}") from None
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    adapter = adapter_for_architecture(arch)  # fail before reading any weights
    if device_map is not None and _ties_embeddings(config):
        check_tied_placement(device_map, adapter.embed_tokens, adapter.lm_head)
    try:
        kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
        if device_map is not None:
            kwargs["device_map"] = device_map
            if offload_folder is not None:
                kwargs["offload_folder"] = str(offload_folder)
        with _quiet_weight_loading():
            hf_model = AutoModelForCausalLM.from_pretrained(ref, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"could not load the model weights of {ref!r}: {exc}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref)
    except Exception as exc:
        raise ModelLoadError(f"could not load the tokenizer of {ref!r}: {exc}") from None
    if device is not None:
        hf_model = hf_model.to(device)
    return LanguageModel.from_hf(hf_model, tokenizer, name=given)


def _check_device_map(device_map: DeviceMap | None, device: torch.device | None,
                      offload_folder: str | os.PathLike | None) -> DeviceMap | None:
    """Validate a device_map request before any weights are read."""
    device_map = parse_device_map(device_map)
    if device_map is None:
        if offload_folder is not None:
            raise ModelLoadError("offload_folder only applies with a device_map that offloads "
                                 "modules to 'disk'")
        return None
    if device is not None:
        raise ModelLoadError(
            f"give either device ({str(device)!r}) or device_map ({device_map!r}), not both: the "
            "device_map decides where every layer goes"
        )
    require_accelerate()
    if isinstance(device_map, Mapping):  # a missing GPU fails here, not inside transformers
        for path, target in device_map.items():
            if target not in OFFLOAD_TARGETS:
                check_device(f"cuda:{target}" if isinstance(target, int) else target,
                             what=f"device_map entry {path!r}:")
    if uses_disk(device_map) and offload_folder is None:
        raise ModelLoadError("the device_map offloads modules to 'disk'; give offload_folder "
                             "(--offload-folder), the directory their weights are written to")
    return device_map


def _ties_embeddings(config) -> bool:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)))
