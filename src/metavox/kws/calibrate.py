"""Open-set calibration on *streams*: the threshold, and the bank of negatives' embeddings,
from negative streams laid out like a test stream, with the threshold set on false accepts
per hour.

Calibrating on isolated clips (one word padded with silence, as at enrollment) misses what
a stream's windows hold: parts of words, two neighbouring words, noise. Here two negative
streams are built from clips of words that are none of the enrolled ones (the run's own
meta-training words): the first one's windows, embedded by the adapted model, join the
bank of negatives' embeddings (which the ``background`` rule scores against and the
cascade's stage 1 is calibrated on); on the second one the spotter runs with the model's
open-set rule, and the threshold is
the smallest at which its detections (with the smoothing and refractory period of
``settings``) stay at or below the target number of false accepts per hour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metavox.kws.protocol import StreamConfig, negative_stream, score, stream_features
from metavox.kws.spotter import SpotSettings, smoothed_scores, triggered
from metavox.meta.openset import OpenSet, spread_of
from metavox.pipeline.enroll import Adapted, other_training_words


@dataclass
class NegativeStreams:
    """Features of the two negative streams (see the module doc)."""

    bank_features: Tensor  # [hops, 1, F, frames]
    times: np.ndarray  # the calibration stream's hop times
    features: Tensor  # [hops, 1, F, frames]
    hours: float  # the calibration stream's length


def negative_streams(paths: list[str], frontend, *, seed: int = 0, clips: int = 150,
                     config: StreamConfig | None = None) -> NegativeStreams:
    """Two negative streams of ``clips`` clips each from disjoint halves of ``paths``."""
    if len(paths) < 4:
        raise ValueError(f"stream calibration needs negative clips; got {len(paths)}")
    cfg = config or StreamConfig()
    order = np.random.default_rng([seed, 29]).permutation(len(paths))
    halves = [[paths[i] for i in order[k::2]] for k in (0, 1)]
    bank = negative_stream(halves[0], cfg, seed, frontend.sample_rate, clips=clips)
    calib = negative_stream(halves[1], cfg, seed + 1, frontend.sample_rate, clips=clips)
    _, bank_x = stream_features(bank, frontend)
    times, x = stream_features(calib, frontend)
    return NegativeStreams(bank_x[::2], times, x, calib.seconds / 3600)


@dataclass
class StreamCalibration:
    """An adapted model's bank (clip negatives plus negative-stream windows) and its
    smoothed scores under ``rule`` on the calibration stream, from which thresholds are
    read."""

    rule: str
    bank: Tensor
    times: np.ndarray
    best: np.ndarray
    scores: np.ndarray
    hours: float
    settings: SpotSettings

    def false_accepts_per_hour(self, threshold: float) -> float:
        fired = triggered(self.times, self.best, self.scores, threshold,
                          self.settings.refractory_seconds)
        return len(fired) / self.hours

    def threshold(self, fa_per_hour: float) -> float:
        """The smallest threshold (among the scores seen) whose false accepts per hour on
        the calibration stream are at most ``fa_per_hour``."""
        candidates = np.unique(self.scores)
        lo, hi = 0, len(candidates)  # search the first candidate index that satisfies
        while lo < hi:
            mid = (lo + hi) // 2
            if self.false_accepts_per_hour(float(candidates[mid])) <= fa_per_hour:
                hi = mid
            else:
                lo = mid + 1
        if lo == len(candidates):  # even the highest score fires too often: above it
            return float(np.nextafter(candidates[-1], np.inf))
        return float(candidates[lo])

    def open_set(self, fa_per_hour: float) -> OpenSet:
        return OpenSet(self.rule, self.threshold(fa_per_hour), None,
                       len(self.scores), background=self.bank, fa_per_hour=fa_per_hour,
                       spread=spread_of(torch.from_numpy(self.scores)))


def calibrate_on_streams(adapted: Adapted, streams: NegativeStreams, clip_bank: Tensor | None,
                         settings: SpotSettings | None = None, *, rule: str = "logit"
                         ) -> StreamCalibration:
    """See the module doc; ``clip_bank``: the bank from clip negatives, kept in the bank;
    ``rule``: the open-set rule whose threshold is set."""
    settings = (settings or SpotSettings()).resolve(adapted.frontend)
    windows = torch.cat([adapted.learner.features(streams.bank_features[i:i + 512])
                         for i in range(0, len(streams.bank_features), 512)])
    bank = windows if clip_bank is None else torch.cat([clip_bank, windows])
    probe = OpenSet(rule, background=bank)
    best, scores = smoothed_scores(score(adapted, streams.features, probe), settings.smooth)
    return StreamCalibration(rule, bank, streams.times, best, scores, streams.hours, settings)




def calibrate_enrolled(adapted: Adapted, loaded, words: list[str], fa_per_hour: float, *,
                       settings: SpotSettings | None = None) -> OpenSet | None:
    """Stream calibration for a freshly enrolled model (``metavox adapt``): negative
    streams from the run's own meta-training words other than ``words``; ``None`` when
    the run's corpus is not at hand (the clip calibration then stays)."""
    found = other_training_words(loaded, words)
    if found is None:
        return None
    data, keep = found
    paths = [u.path for u in data.corpus if u.label in set(keep)]
    if len(paths) < 20:
        return None
    streams = negative_streams(paths, adapted.frontend, seed=loaded.config.seed)
    cal = calibrate_on_streams(adapted, streams, adapted.open_set.background, settings,
                               rule=adapted.open_set.rule)
    return cal.open_set(fa_per_hour)


__all__ = ["NegativeStreams", "StreamCalibration", "calibrate_enrolled", "calibrate_on_streams",
           "negative_streams"]
