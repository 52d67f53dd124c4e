"""The meta-learning engine: a functional inner loop and algorithms as losses.

>>> algo = MAML(model, inner_lr=0.4, steps=5)      # any nn.Module
>>> out = algo(batch)                               # batch: EpisodeBatch
>>> out.loss.backward(); optimizer.step()
>>> learner = algo.adapt(support_x, support_y)      # a classifier for a new task
"""

from metavox.meta.anil import ANIL
from metavox.meta.base import Learner, MetaAlgorithm, MetaOutput
from metavox.meta.batching import map_tasks, resolve_strategy
from metavox.meta.functional import TaskBatchNorm, forward, functional_buffers, meta_parameters
from metavox.meta.inner import adapt, inner_loop
from metavox.meta.maml import MAML, MAMLPlusPlus, MetaSGD, msl_weights
from metavox.meta.protonet import ProtoNet
from metavox.meta.reptile import Reptile

ALGORITHMS = {
    "maml": MAML,
    "fomaml": lambda model, **kw: MAML(model, first_order=True, **kw),
    "metasgd": MetaSGD,
    "mamlpp": MAMLPlusPlus,
    "anil": ANIL,
    "reptile": Reptile,
    "protonet": ProtoNet,
}

__all__ = [
    "ALGORITHMS", "ANIL", "MAML", "MAMLPlusPlus", "Learner", "MetaAlgorithm", "MetaOutput",
    "MetaSGD", "ProtoNet", "Reptile", "TaskBatchNorm", "adapt", "forward",
    "functional_buffers", "inner_loop", "map_tasks", "meta_parameters", "msl_weights",
    "resolve_strategy",
]
