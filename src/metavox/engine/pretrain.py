"""Plain supervised pre-training: a backbone learns to classify every clip of a feature
store with ordinary mini-batches. The ``finetune`` baseline starts from it, and a run may
start meta-training from it (``optim.pretrain_iterations``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metavox.data import FeatureStore
from metavox.engine.loop import warmup_cosine
from metavox.progress import Progress


def pretrain_classifier(
    model: nn.Module,
    store: FeatureStore,
    *,
    iterations: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Module, list[str]]:
    """Train ``model`` (its head sized to the store's classes) to classify clips of
    ``store``; returns the model and the class names in label order."""
    classes = sorted(set(store.labels))
    index = {c: i for i, c in enumerate(classes)}
    targets = torch.tensor([index[c] for c in store.labels], dtype=torch.int64)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(iterations, iterations // 20,
                                                                  0.01))
    rng = np.random.default_rng([seed, 7])
    bar = Progress(iterations, "pre-train classifier", "it", enabled=progress)
    model.train()
    for _ in range(iterations):
        rows = rng.choice(len(store), size=min(batch_size, len(store)), replace=False)
        x = torch.from_numpy(store.take(np.sort(rows))).unsqueeze(1)
        y = targets[np.sort(rows)]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            bar.set_postfix(f"loss {loss.item():.3f}")
            bar.update(1)
    bar.close()
    return model.eval(), classes
