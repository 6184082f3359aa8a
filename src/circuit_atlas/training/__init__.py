"""Train transcoders (PLT, skip, CLT) for any supported model and export them for tracing.

Layers of the package, bottom up:
- `config`: what to train (`ArchitectureConfig`) and how (`OptimConfig`), validated, JSON-able;
- `activations`, `architecture`, `losses`: the trainable `TranscoderStack` and its objective
  (JumpReLU with a straight-through threshold estimator and tanh sparsity, ReLU, TopK, BatchTopK);
- `source`, `streaming`, `windows`, `cache`, `corpus`: where (input, target) activation pairs
  come from (packed or one-document windows, chosen per model and corpus);
- `selection`: which layers and hook points;
- `trainer`, `seeds`, `best`, `init`, `end_to_end`: Adam, schedules, dead features, metrics,
  exact-resume checkpoints, DDP; seeds in lockstep, keep-the-best, starting from a set, KL term;
- `thresholds`, `fidelity`, `export`, `evaluate`, `pipeline`: BatchTopK thresholds, the
  trained-vs-exported check, `Transcoders` objects, held-out metrics, end-to-end jobs (what
  `circuit-atlas train` / `eval-transcoders` run).
"""

from circuit_atlas.training.architecture import ExportedWeights, StackOutput, TranscoderStack
from circuit_atlas.training.cache import CachedActivationSource, build_activation_cache
from circuit_atlas.training.config import (ACTIVATIONS, KINDS, ArchitectureConfig, OptimConfig,
                                           budget)
from circuit_atlas.io.corpus import Corpus, CorpusError, open_corpus
from circuit_atlas.training.errors import (TrainingConfigError, TrainingDataError,
                                           TrainingDivergedError)
from circuit_atlas.training.evaluate import EvalReport, LayerEval, evaluate_transcoders
from circuit_atlas.training.export import export_transcoders, to_transcoders
from circuit_atlas.training.fidelity import ExportFidelity, export_fidelity
from circuit_atlas.training.pipeline import (JobResult, TrainJob, run_eval_job,
                                             run_training_job)
from circuit_atlas.training.source import ActivationSource, TensorActivationSource
from circuit_atlas.training.streaming import ModelActivationSource, TokenWindows
from circuit_atlas.training.synthetic import PlantedData, planted_data, recovery_cosines
from circuit_atlas.training.trainer import Trainer, TrainResult
from circuit_atlas.training.windows import WindowChoice, choose_windows

__all__ = [
    "ACTIVATIONS", "KINDS", "ActivationSource", "ArchitectureConfig", "CachedActivationSource",
    "Corpus", "CorpusError", "EvalReport", "ExportFidelity", "ExportedWeights", "JobResult",
    "LayerEval", "WindowChoice", "budget", "choose_windows", "export_fidelity",
    "ModelActivationSource", "OptimConfig", "PlantedData", "StackOutput", "TensorActivationSource",
    "TokenWindows", "TrainJob", "TrainResult", "Trainer", "TrainingConfigError",
    "TrainingDataError", "TrainingDivergedError", "TranscoderStack", "build_activation_cache",
    "evaluate_transcoders", "export_transcoders", "open_corpus", "planted_data",
    "recovery_cosines", "run_eval_job", "run_training_job", "to_transcoders",
]
