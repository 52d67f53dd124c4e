"""Corpora, splits, feature cache and episode samplers: corpus -> episode batches."""

from metavox.data.batch import EpisodeBatch

__all__ = ["EpisodeBatch"]
