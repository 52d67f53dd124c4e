"""The training engine: the meta-training loop and its callbacks, episode evaluation,
checkpoint state, distributed helpers and precision.

It sits above :mod:`metavox.meta` and :mod:`metavox.data` and below
:mod:`metavox.pipeline`; it takes a narrow :class:`EngineConfig` of its own, not a run
config.
"""

from metavox.engine.callbacks import Checkpointing, CSVLog, ProgressBar, TensorBoardLog, Validation
from metavox.engine.evaluation import EpisodeResults, confidence_interval, evaluate_episodes
from metavox.engine.loop import (
    Callback,
    DivergenceError,
    EngineConfig,
    IterationRecord,
    Trainer,
    TrainState,
    warmup_cosine,
)
from metavox.engine.precision import autocast, resolve_device
from metavox.engine.pretrain import pretrain_classifier

__all__ = [
    "CSVLog", "Callback", "Checkpointing", "DivergenceError", "EngineConfig",
    "EpisodeResults", "IterationRecord", "ProgressBar", "TensorBoardLog", "TrainState",
    "Trainer", "Validation", "autocast", "confidence_interval", "evaluate_episodes",
    "pretrain_classifier", "resolve_device", "warmup_cosine",
]
