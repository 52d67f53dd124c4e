"""The meta-learning engine: a functional inner loop and algorithms as losses.

>>> algo = create_algorithm("maml", model, inner_lr=0.4, steps=5)   # any nn.Module
>>> out = algo(batch)                                   # batch: EpisodeBatch
>>> out.loss.backward(); optimizer.step()
>>> learner = algo.adapt(support_x, support_y)          # a classifier for a new task
>>> learner.save("words.safetensors")

Importing this package registers every algorithm (each module's ``@register_algorithm``).
"""

from metavox.meta.anil import ANIL
from metavox.meta.base import (
    InnerLoopAlgorithm,
    MetaAlgorithm,
    MetaOutput,
    StepRecorder,
    TaskSettings,
)
from metavox.meta.baselines import FineTune
from metavox.meta.batching import map_tasks, resolve_strategy
from metavox.meta.functional import TaskBatchNorm, forward, functional_buffers, meta_parameters
from metavox.meta.inner import adapt, inner_loop
from metavox.meta.learner import LEARNER_KINDS, Learner, register_learner_kind
from metavox.meta.maml import MAML, MAMLPlusPlus, MetaSGD, msl_weights
from metavox.meta.protonet import ProtoNet
from metavox.meta.registry import (
    ALGORITHMS,
    AlgorithmSpec,
    algorithm_spec,
    create_algorithm,
    list_algorithms,
    register_algorithm,
)
from metavox.meta.reject import ProtoReject, RejectClassifier
from metavox.meta.reptile import Reptile

__all__ = [
    "ALGORITHMS", "ANIL", "LEARNER_KINDS", "MAML", "AlgorithmSpec", "FineTune",
    "InnerLoopAlgorithm", "Learner", "MAMLPlusPlus", "MetaAlgorithm", "MetaOutput", "MetaSGD",
    "ProtoNet", "ProtoReject", "RejectClassifier", "Reptile", "StepRecorder", "TaskBatchNorm",
    "TaskSettings", "adapt",
    "algorithm_spec", "create_algorithm", "forward", "functional_buffers", "inner_loop",
    "list_algorithms", "map_tasks", "meta_parameters", "msl_weights", "register_algorithm",
    "register_learner_kind", "resolve_strategy",
]
