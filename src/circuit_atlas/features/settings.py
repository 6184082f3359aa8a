"""What a feature-store build is asked to do (`BuildSettings`), what it did (`BuildReport`), and
the checks of both that run before a store is touched."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from circuit_atlas.features.blocks import DEFAULT_BLOCK_DOCUMENTS
from circuit_atlas.features.errors import FeatureBuildError
from circuit_atlas.features.keys import MAX_CONTEXT_LEN
from circuit_atlas.io.corpus import Corpus, CorpusError

DEFAULT_CONTEXT_LEN = 128


@dataclass(frozen=True)
class BuildSettings:
    """Everything that changes what a store holds (a resumed build must use the same values).

    `context_len` None means min(128, the model's maximum positions). `context_before/after`:
    tokens kept around each example's focal token. `n_samples`: size of the uniform sample of
    active occurrences the quantile groups are drawn from. `max_tokens`: budget of counted tokens
    (positions with statistics); None reads the whole corpus. `block_documents`: documents per
    block; batches never span two blocks, and ranks of a distributed build share out blocks
    (`blocks.py`), so a store is the same whatever the number of ranks, but not across block
    sizes (padded batches of another shape change activations in the last bits).
    """

    context_len: int | None = None
    top_k: int = 20
    n_samples: int = 40
    context_before: int = 15
    context_after: int = 5
    n_logits: int = 10
    max_tokens: int | None = None
    seed: int = 0
    block_documents: int = DEFAULT_BLOCK_DOCUMENTS


@dataclass
class BuildReport:
    """What a call did: totals of the store after the call and this call's own throughput."""

    out: Path
    tokens: int
    documents: int
    windows: int
    complete: bool
    stop_reason: str
    resumed: bool
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def check_settings(model, settings: BuildSettings, batch_size: int) -> int:
    """The context length to use; raises FeatureBuildError naming a bad setting."""
    for name in ("top_k", "n_samples", "n_logits"):
        if getattr(settings, name) < 1:
            raise FeatureBuildError(f"{name} must be at least 1, got {getattr(settings, name)}")
    for name in ("context_before", "context_after", "seed"):
        if getattr(settings, name) < 0:
            raise FeatureBuildError(f"{name} must not be negative, got {getattr(settings, name)}")
    if settings.block_documents < 1:
        raise FeatureBuildError(f"--block-documents must be at least 1, got {settings.block_documents}")
    if batch_size < 1:
        raise FeatureBuildError(f"--batch-size must be at least 1, got {batch_size}")
    if settings.max_tokens is not None and settings.max_tokens < 1:
        raise FeatureBuildError(f"--max-tokens must be at least 1, got {settings.max_tokens}")
    limit = min(model.lm.max_positions or MAX_CONTEXT_LEN, MAX_CONTEXT_LEN)
    context_len = settings.context_len or min(DEFAULT_CONTEXT_LEN, limit)
    if not 2 <= context_len <= limit:
        raise FeatureBuildError(
            f"--context-len must lie in 2..{limit} (model {model.lm.name!r} accepts "
            f"{model.lm.max_positions} positions), got {context_len}"
        )
    return context_len


def check_not_empty(corpus: Corpus) -> None:
    first = next(iter(corpus.documents(0)), None)
    if first is None:
        raise CorpusError(f"corpus {corpus.description} has no documents (every document is "
                          "empty or whitespace)")
