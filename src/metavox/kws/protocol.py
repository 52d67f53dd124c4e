"""Keyword spotting on streams, reproducibly: long test streams built from a corpus, and
detection rate against false accepts per hour.

A stream (one per episode, seeded by ``(seed, episode)``) enrolls ``ways`` words drawn from
the test words, with up to ``max(shots)`` clips each (the first ``k`` of them for
``k``-shot), then lays out the words' other clips (up to ``targets`` each) among clips of
every other word of the corpus except the run's meta-training words (``nontargets`` per
target; those words are among the negatives the open set is calibrated on, so using them
would flatter it), separated by random gaps, over
a continuous background noise at a signal-to-noise ratio drawn from ``snr_db``. Each word's
time span in the stream is known (its clip's speech, found by energy). Every clip comes
from the corpus given: for a run whose split holds speakers out,
:func:`metavox.kws.report.run_streams` gives the test speakers' clips alone, so
enrollment, targets and non-targets are all by unseen speakers (each stream records its
``speakers``). With ``kind="sentences"`` the non-target speech is continuous instead:
sentences spoken by the synthesiser, none of the corpus's words
(:mod:`metavox.kws.sentences`), as many words as the clips would have been.

Every method adapts on the same enrollment clips and scores the same stream (the stream's
features are computed once, then each adapted model scores them). A detection is a *hit*
when it names a placed target word and falls between the word's start and ``tolerance``
seconds after its end (each placement is hit at most once); any other detection is a
*false accept*. Rates: hits over placements, and false accepts per hour of the stream
outside the target words' spans and per 100 non-target words spoken in it (a clip is one
word, a sentence of the ``sentences`` kind counts its words).

The operating point is the one a user sets: the open-set rule (``logit`` by default: for a
model trained to reject that is its learned output; ``rule`` picks another)
is calibrated at enrollment to accept a fraction ``far`` of negative clips (generated and
recorded backgrounds and the run's own meta-training words, never the test stream:
:func:`~metavox.pipeline.enroll.negative_pool`), and sweeping ``far``
traces the DET curve. Past its strictest point (far 0: above every negative) the curve
goes on with that threshold raised by multiples of the negatives' score spread
(:data:`MARGINS`): how far the scoring rule itself can go, whatever the calibration.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metavox.audio.augment import background_noise
from metavox.audio.features import FrontendConfig
from metavox.audio.io import load_audio, speech_bounds
from metavox.data import Corpus
from metavox.kws.segments import SegmentSettings, segment_stream
from metavox.kws.spotter import SpotSettings, smoothed_scores, triggered
from metavox.meta import MetaAlgorithm
from metavox.meta.openset import RULES, OpenSet, spread_of, threshold_for
from metavox.pipeline.enroll import Adapted, featurize, featurize_waves, negative_scores
from metavox.progress import Progress

#: the far values swept for the DET curve when calibrating on clips (fraction of negative
#: clips accepted) and on streams (false accepts per hour of the negative stream)
FAR_GRID = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
FA_PER_HOUR_GRID = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
#: past the strictest calibrated threshold (far 0: above every negative), the DET curve goes
#: on with that threshold raised by these multiples of the negatives' score spread (0.1 to
#: 4 in steps of 0.1, fine enough that the curve has no gap between 1 and 2 false accepts
#: per 100 words): where the scoring rule itself could reach, whatever the calibration
MARGINS = tuple(round(0.1 * i, 1) for i in range(1, 41))


@dataclass(frozen=True)
class StreamConfig:
    """How test streams are built and scored (see the module doc)."""

    episodes: int = 12
    ways: int = 5
    shots: tuple[int, ...] = (1, 3, 5)
    targets: int = 10  # placements per enrolled word (fewer if the word has fewer clips)
    nontargets: int = 3  # non-target clips per target placement
    gap: tuple[float, float] = (0.3, 1.5)  # seconds between clips, uniform
    snr_db: tuple[float, ...] = (20.0, 10.0)
    noise: str = "pink"
    tolerance: float = 0.75  # seconds after a word's end in which a detection counts
    far: float = 0.01  # the operating point reported (clip calibration)
    fa_per_hour: float = 1.0  # the operating point reported (stream calibration)
    calibration: str = "streams"  # "streams" (negative streams, FA/h) or "clips" (far)
    rule: str = "logit"
    seed: int = 0
    #: how scores become detections, ``settings.decision`` included: "windows", the
    #: sliding window every hop (what `metavox listen` does), or "segments", one window
    #: per speech segment (:mod:`metavox.kws.segments`; clip calibration only)
    settings: SpotSettings = field(default_factory=SpotSettings)
    #: the non-target speech: "words" (clips of the corpus's other words) or "sentences"
    #: (continuous sentences spoken by the synthesiser, :mod:`metavox.kws.sentences`)
    kind: str = "words"
    #: on the ``fusion`` base: stage-1 rates of the cascade (:mod:`metavox.kws.cascade`)
    #: to score beside verifying every hop, each a method row of its own ("windows" only)
    cascade: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.ways < 1 or not self.shots or min(self.shots) < 1:
            raise ValueError("episodes, ways and every shots must be >= 1")
        if self.targets < 1 or self.nontargets < 0 or not 0 <= self.gap[0] <= self.gap[1]:
            raise ValueError("need targets >= 1, nontargets >= 0 and 0 <= gap[0] <= gap[1]")
        if self.far not in FAR_GRID or self.fa_per_hour not in FA_PER_HOUR_GRID:
            raise ValueError(f"far must be one of {FAR_GRID} and fa_per_hour one of "
                             f"{FA_PER_HOUR_GRID}, got {self.far}, {self.fa_per_hour}")
        if self.calibration not in ("streams", "clips"):
            raise ValueError(f"calibration must be 'streams' or 'clips', got "
                             f"{self.calibration!r}")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.kind not in ("words", "sentences"):
            raise ValueError(f"kind must be 'words' or 'sentences', got {self.kind!r}")
        if any(not 0.0 <= f <= 1.0 for f in self.cascade):
            raise ValueError(f"cascade stage-1 rates must be in [0, 1], got {self.cascade}")
        if self.cascade and self.decision != "windows":
            raise ValueError("the cascade decides on the sliding window (decision='windows')")
        if self.decision == "segments" and self.calibration != "clips":
            raise ValueError("segment decisions are calibrated on clips (calibration='clips')")

    @property
    def decision(self) -> str:
        """``settings.decision``: "windows" or "segments"."""
        return self.settings.decision

    @property
    def grid(self) -> tuple[float, ...]:
        """The calibration targets swept: FA/h on streams, or far on clips."""
        return FA_PER_HOUR_GRID if self.calibration == "streams" else FAR_GRID

    @property
    def operating_point(self) -> float:
        return self.fa_per_hour if self.calibration == "streams" else self.far


@dataclass(frozen=True)
class Placement:
    """A clip (or a spoken sentence) in a stream: its ``word``, the span of its speech
    (seconds), whether the word was enrolled."""

    word: str
    start: float
    end: float
    target: bool
    #: the words it holds: 1 for a clip, a sentence's words for a spoken sentence (whose
    #: ``word`` is then the sentence's text)
    words: int = 1


@dataclass
class TestStream:
    """One episode's stream: the audio, what is where, and the enrollment clips."""

    wave: np.ndarray
    sample_rate: int
    words: list[str]
    enroll: dict[str, list[str]]  # word -> paths, in order (the first k for k-shot)
    placements: list[Placement]
    snr_db: float
    #: the speakers of every clip in it, enrollment included (sorted; unknown ones left out)
    speakers: list[str] = field(default_factory=list)
    #: the synthetic voices that spoke its sentences (the ``sentences`` kind; sorted)
    voices: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.wave) / self.sample_rate

    @property
    def nontarget_words(self) -> int:
        """The non-target words spoken in the stream (a sentence counts its words)."""
        return sum(p.words for p in self.placements if not p.target)

    @property
    def non_target_seconds(self) -> float:
        """The stream's length outside the target words' spans (with their tolerance)."""
        spans = [(p.start, p.end) for p in self.placements if p.target]
        return self.seconds - sum(e - s for s, e in spans)


def build_stream(corpus: Corpus, test_words: list[str], cfg: StreamConfig, episode: int,
                 sample_rate: int, *, exclude: set[str] | frozenset[str] = frozenset()
                 ) -> TestStream:
    """Episode ``episode``'s stream from ``corpus`` (see the module doc); words in
    ``exclude`` are never non-targets."""
    rng = np.random.default_rng([cfg.seed, int(episode), 17])
    by_label = corpus.by_label()
    need = max(cfg.shots) + 1
    eligible = [w for w in sorted(test_words) if len(by_label.get(w, [])) >= need]
    if len(eligible) < cfg.ways:
        raise ValueError(f"streams need {cfg.ways} test words with at least {need} clips "
                         f"each; only {len(eligible)} have: {eligible}")
    words = sorted(rng.choice(eligible, size=cfg.ways, replace=False).tolist())
    enroll, items = {}, []
    for w in words:
        clips = [u.path for u in by_label[w]]
        order = rng.permutation(len(clips))
        enroll[w] = [clips[i] for i in order[: max(cfg.shots)]]
        items += [(w, clips[i], True) for i in order[max(cfg.shots):][: cfg.targets]]
    voices = []
    if cfg.kind == "sentences":
        from metavox.kws.sentences import VOICES, make_sentences, speak

        banned = set(by_label) | set(test_words) | set(exclude)
        texts = make_sentences(cfg.nontargets * len(items), rng, banned)
        who = [str(v) for v in rng.choice(VOICES, size=len(texts))]
        seeds = rng.integers(0, 2**31 - 1, size=len(texts))
        audio = speak([(v, t, int(x)) for v, t, x in zip(who, texts, seeds, strict=True)],
                      sample_rate)
        items += [(t, a, False) for t, a in zip(texts, audio, strict=True)]
        voices = sorted(set(who))
    else:
        others = [u.path for label, us in by_label.items()
                  if label not in words and label not in exclude for u in us]
        labels = {u.path: u.label for u in corpus}
        n_other = min(len(others), cfg.nontargets * len(items))
        items += [(labels[others[i]], others[i], False)
                  for i in rng.choice(len(others), size=n_other, replace=False)]
    items = [items[i] for i in rng.permutation(len(items))]
    wave, placements, snr = lay_out(items, cfg, rng, sample_rate)
    speaker = {u.path: u.speaker for u in corpus}
    used = [p for w in words for p in enroll[w]] + [path for _, path, _ in items
                                                     if isinstance(path, str)]
    speakers = sorted({speaker[p] for p in used if speaker.get(p) is not None})
    return TestStream(wave, sample_rate, words, enroll, placements, snr, speakers, voices)


def lay_out(items: list[tuple[str, str | np.ndarray, bool]], cfg: StreamConfig,
            rng: np.random.Generator, sample_rate: int
            ) -> tuple[np.ndarray, list[Placement], float]:
    """Clips ``(word, path, target)`` in order, separated by random gaps, over background
    noise at an SNR drawn from ``cfg.snr_db``: ``(wave, placements, snr)``. An item whose
    ``path`` is audio (a spoken sentence, ``word`` its text) is scaled to the clips' mean
    speech level and counts as its text's words."""
    audio = [load_audio(src, sample_rate) if isinstance(src, str) else np.asarray(src)
             for _, src, _ in items]
    bounds = [speech_bounds(clip, sample_rate, top_db=30.0) for clip in audio]
    power = [float(np.mean(np.square(clip[a:b]))) if b > a else 0.0
             for clip, (a, b) in zip(audio, bounds, strict=True)]
    recorded = [pw for (_, src, _), pw in zip(items, power, strict=True)
                if isinstance(src, str)]
    if recorded and len(recorded) < len(items):  # spoken sentences at the clips' level
        level = math.sqrt(np.mean(recorded))
        for i, (_, src, _) in enumerate(items):
            if not isinstance(src, str) and power[i] > 0:
                audio[i] = (audio[i] * (level / math.sqrt(power[i]))).astype(np.float32)
                power[i] = level ** 2
    pieces, placements, t = [], [], 0
    for (word, src, target), clip, (a, b) in zip(items, audio, bounds, strict=True):
        gap = int(rng.uniform(*cfg.gap) * sample_rate)
        pieces += [np.zeros(gap, dtype=np.float32), clip]
        start = t + gap
        placements.append(Placement(word, (start + a) / sample_rate, (start + b) / sample_rate,
                                    target, 1 if isinstance(src, str) else len(word.split())))
        t = start + len(clip)
    pieces.append(np.zeros(sample_rate, dtype=np.float32))  # a second of background to end
    speech = np.concatenate(pieces)
    snr = float(rng.choice(cfg.snr_db))
    level = math.sqrt(max(np.mean(power), 1e-12)) / 10 ** (snr / 20)
    noise = background_noise(cfg.noise, len(speech), sample_rate, rng, level=level)
    return np.clip(speech + noise, -1.0, 1.0).astype(np.float32), placements, snr


def negative_stream(paths: list[str], cfg: StreamConfig, seed: int, sample_rate: int, *,
                    clips: int = 150) -> TestStream:
    """A stream of ``clips`` clips drawn from ``paths`` (words that are none of the
    enrolled ones), laid out as a test stream: what open-set calibration on streams
    listens to."""
    rng = np.random.default_rng([seed, 23])
    chosen = rng.choice(len(paths), size=min(clips, len(paths)), replace=False)
    wave, placements, snr = lay_out([("", paths[i], False) for i in chosen], cfg, rng,
                                    sample_rate)
    return TestStream(wave, sample_rate, [], {}, placements, snr)


def stream_features(stream: TestStream, adapted_frontend, *, chunk: float = 1.0,
                    hop: int | None = None) -> tuple[np.ndarray, Tensor]:
    """``(times [hops], features [hops, 1, F, frames])`` of a whole stream, through the
    front-end's feature stream (shared by every method that scores it); ``hop``: samples
    between windows (default: :func:`stream_hop`, what a spotter uses)."""
    from metavox.audio.streaming import feature_stream
    from metavox.kws.cascade import HOP, fusion_stream_features, is_heavy

    if is_heavy(adapted_frontend) and (hop is None or hop % HOP == 0):
        return fusion_stream_features(stream.wave, adapted_frontend, hop=hop or HOP)
    fs = feature_stream(adapted_frontend, stream_hop(adapted_frontend) if hop is None else hop)
    step = int(chunk * stream.sample_rate)
    out = []
    for i in range(0, len(stream.wave), step):
        out += fs.push(stream.wave[i:i + step])
    times = np.array([t for t, _ in out])
    return times, torch.stack([f for _, f in out]).unsqueeze(1)


def stream_hop(frontend) -> int:
    """Samples between a spotter's windows on ``frontend``: the cascade's 80 ms on the
    ``fusion`` base (:mod:`metavox.kws.cascade`), else the front-end's default."""
    from metavox.audio.streaming import default_hop
    from metavox.kws.cascade import HOP, is_heavy

    return HOP if is_heavy(frontend) else default_hop(frontend)


def score(adapted: Adapted, feats: Tensor, open_set: OpenSet, *, batch: int = 512) -> Tensor:
    """Per-hop open-set scores ``[hops, words]`` of an adapted model on stream features."""
    return torch.cat([adapted.values(feats[i:i + batch], open_set)
                      for i in range(0, len(feats), batch)])


@dataclass(frozen=True)
class Outcome:
    """One detection against a stream: the ``word`` it named at ``time``, whether it is a
    ``hit``, and what was being said then (``heard``: the placed clip's word, ``""`` for
    background alone); ``latency``: detection time minus the word's end, for hits."""

    word: str
    time: float
    hit: bool
    heard: str
    latency: float | None = None


def outcomes(stream: TestStream, events: list[tuple[str, float]], tolerance: float
             ) -> list[Outcome]:
    """Each detection ``(word, time)`` matched against the stream's target placements
    (each hit at most once): a hit names a placed target word between its start and
    ``tolerance`` seconds after its end; anything else is a false accept, recorded with
    the word being said then."""
    targets = [p for p in stream.placements if p.target]
    used = [False] * len(targets)
    out = []
    for word, t in events:
        for k, p in enumerate(targets):
            if not used[k] and p.word == word and p.start <= t <= p.end + tolerance:
                used[k] = True
                out.append(Outcome(word, t, True, p.word, t - p.end))
                break
        else:
            heard = [p.word for p in stream.placements if p.start <= t <= p.end + tolerance]
            out.append(Outcome(word, t, False, heard[-1] if heard else ""))
    return out


def match_events(stream: TestStream, events: list[tuple[str, float]], tolerance: float
                 ) -> tuple[int, int, list[float]]:
    """``(hits, false accepts, latencies)`` of detections ``(word, time)`` against the
    stream's target placements (see :func:`outcomes`)."""
    got = outcomes(stream, events, tolerance)
    return (sum(o.hit for o in got), sum(not o.hit for o in got),
            [o.latency for o in got if o.hit])


def match(stream: TestStream, words: list[str], times: np.ndarray, best: np.ndarray,
          fired: np.ndarray, tolerance: float) -> list[Outcome]:
    """The :func:`outcomes` of detections at hops ``fired``."""
    events = [(words[int(best[i])], float(times[i])) for i in fired.tolist()]
    return outcomes(stream, events, tolerance)


@dataclass
class StreamResult:
    """One method at one number of shots, pooled over the episodes, per ``far`` value."""

    method: str
    shots: int
    far: list[float]
    hits: list[int]
    targets: int
    false_accepts: list[int]
    hours: float
    latencies: list[float] = field(default_factory=list)  # at the reported operating point
    #: non-target words spoken in the streams (a clip: one; a sentence: its words)
    nontarget_words: int = 0
    #: the strictest threshold raised by :data:`MARGINS` spreads: hits and false accepts
    margins: list[float] = field(default_factory=lambda: list(MARGINS))
    margin_hits: list[int] = field(default_factory=lambda: [0] * len(MARGINS))
    margin_false_accepts: list[int] = field(default_factory=lambda: [0] * len(MARGINS))
    #: at the reported operating point: per test word ``[hits, placements]``; false accepts
    #: by ``"heard -> named"`` (``heard``: the word being said, or "background"); per SNR
    #: (dB) ``[hits, placements, false accepts, non-target hours, non-target words]``
    by_word: dict[str, list[int]] = field(default_factory=dict)
    confusions: dict[str, int] = field(default_factory=dict)
    by_snr: dict[str, list[float]] = field(default_factory=dict)
    #: who and what the streams held: the speakers of their clips (enrollment included)
    #: and the words placed as non-targets (sorted)
    speakers: list[str] = field(default_factory=list)
    nontarget_vocabulary: list[str] = field(default_factory=list)
    #: the synthetic voices of the non-target sentences (the ``sentences`` kind)
    voices: list[str] = field(default_factory=list)
    #: hops scored, and those whose window the full model scored (fewer for a cascade)
    hops: int = 0
    verified_hops: int = 0

    @property
    def verified_fraction(self) -> float:
        """The fraction of hops the full model scored (1 when it verifies every hop)."""
        return self.verified_hops / max(self.hops, 1)

    @property
    def detection_rate(self) -> list[float]:
        return [h / max(self.targets, 1) for h in self.hits]

    @property
    def fa_per_hour(self) -> list[float]:
        return [f / max(self.hours, 1e-9) for f in self.false_accepts]

    @property
    def margin_detection_rate(self) -> list[float]:
        return [h / max(self.targets, 1) for h in self.margin_hits]

    @property
    def margin_fa_per_hour(self) -> list[float]:
        return [f / max(self.hours, 1e-9) for f in self.margin_false_accepts]

    @property
    def fa_per_100_words(self) -> list[float]:
        """False accepts per 100 non-target words spoken in the streams."""
        return [100 * f / max(self.nontarget_words, 1) for f in self.false_accepts]

    @property
    def margin_fa_per_100_words(self) -> list[float]:
        return [100 * f / max(self.nontarget_words, 1) for f in self.margin_false_accepts]

    def curve(self, per: str = "hour") -> tuple[list[float], list[float]]:
        """``(false accept rate, detection_rate)`` of every point, the calibrated ones and
        those past the strictest (:data:`MARGINS`), sorted by the rate: per hour of
        non-target audio (``per="hour"``) or per 100 non-target words (``per="words"``)."""
        if per not in ("hour", "words"):
            raise ValueError(f"per must be 'hour' or 'words', got {per!r}")
        rates = (self.fa_per_hour + self.margin_fa_per_hour if per == "hour"
                 else self.fa_per_100_words + self.margin_fa_per_100_words)
        points = sorted(zip(rates, self.detection_rate + self.margin_detection_rate,
                            strict=True))
        return [f for f, _ in points], [d for _, d in points]

    def rate_at(self, max_fa_per_hour: float) -> float:
        """The best detection rate among all points (calibrated and past the strictest)
        with at most this many false accepts per hour (0 if none qualifies)."""
        ok = [d for f, d in zip(*self.curve(), strict=True) if f <= max_fa_per_hour]
        return max(ok, default=0.0)

    def rate_at_per_100_words(self, max_fa: float) -> float:
        """The best detection rate among all points with at most ``max_fa`` false accepts
        per 100 non-target words (0 if none qualifies)."""
        ok = [d for f, d in zip(*self.curve("words"), strict=True) if f <= max_fa]
        return max(ok, default=0.0)

    def add_breakdown(self, stream: TestStream, got: list[Outcome], hours: float) -> None:
        """Count one stream's outcomes at the operating point into the breakdowns."""
        for p in stream.placements:
            if p.target:
                self.by_word.setdefault(p.word, [0, 0])[1] += 1
        for o in got:
            if o.hit:
                self.by_word[o.word][0] += 1
            else:  # a spoken sentence is named as such, not by its text
                heard = "a sentence" if " " in o.heard else o.heard or "background"
                key = f"{heard} -> {o.word}"
                self.confusions[key] = self.confusions.get(key, 0) + 1
        row = self.by_snr.setdefault(f"{stream.snr_db:g}", [0, 0, 0, 0.0, 0])
        row[0] += sum(o.hit for o in got)
        row[1] += sum(p.target for p in stream.placements)
        row[2] += sum(not o.hit for o in got)
        row[3] += hours
        row[4] += stream.nontarget_words

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(detection_rate=self.detection_rate, fa_per_hour=self.fa_per_hour,
                 fa_per_100_words=self.fa_per_100_words,
                 verified_fraction=self.verified_fraction,
                 margin_fa_per_hour=self.margin_fa_per_hour,
                 margin_fa_per_100_words=self.margin_fa_per_100_words)
        return d


def evaluate_streams(methods: dict[str, MetaAlgorithm], corpus: Corpus, test_words: list[str],
                     frontend, negatives: list[Tensor | None], cfg: StreamConfig, *,
                     exclude: set[str] | frozenset[str] = frozenset(), streams=None,
                     progress: bool = False) -> list[StreamResult]:
    """Every method at every number of shots on the same streams (see the module doc).
    ``negatives``: feature batches of negative clips for open-set calibration; ``streams``:
    the :class:`~metavox.kws.calibrate.NegativeStreams` (needed when
    ``cfg.calibration == "streams"``); ``exclude``: words never used as non-targets (the
    run's meta-training words, which the negatives hold)."""
    from metavox.kws.calibrate import calibrate_on_streams
    from metavox.kws.cascade import (
        calibrate_stage1,
        cascade_scores,
        is_heavy,
        stage1_scores,
        verified_hops,
    )

    if cfg.calibration == "streams" and streams is None:
        raise ValueError("calibration on streams needs the negative streams")
    if cfg.cascade and not is_heavy(frontend):
        raise ValueError(f"the cascade serves the fusion base; this run's front-end is "
                         f"{frontend.kind!r}")
    grid = cfg.grid
    settings = cfg.settings.resolve(frontend)
    variants = [(m, None) for m in methods] + [(m, f) for m in methods for f in cfg.cascade]
    results = {(m, f, k): StreamResult(cascade_name(m, f), k, list(grid), [0] * len(grid), 0,
                                       [0] * len(grid), 0.0)
               for m, f in variants for k in cfg.shots}
    bar = Progress(cfg.episodes, "streams", "stream", enabled=progress)
    for e in range(cfg.episodes):
        stream = build_stream(corpus, test_words, cfg, e, frontend.sample_rate,
                              exclude=exclude)
        if cfg.decision == "segments":  # what a live Spotter with decision="segments" does
            times, feats = segment_features(stream.wave, frontend, cfg.settings.segments)
        else:
            times, feats = stream_features(stream, frontend)
        hours = stream.non_target_seconds / 3600
        for k in cfg.shots:
            paths = [p for w in stream.words for p in stream.enroll[w][:k]]
            x = featurize([Path(p) for p in paths], frontend)
            y = torch.arange(len(stream.words)).repeat_interleave(k)
            for name, algo in methods.items():
                adapted = Adapted(algo.adapt(x, y, classes=stream.words), frontend)
                neg, bank = negative_scores(adapted, negatives, rule=cfg.rule, seed=cfg.seed)
                if cfg.calibration == "streams":
                    cal = calibrate_on_streams(adapted, streams, bank, settings,
                                               rule=cfg.rule)
                    bank = cal.bank
                    thresholds = [cal.threshold(f) for f in grid]
                else:
                    thresholds = [threshold_for(neg, f) for f in grid]
                strictest, spread = thresholds[grid.index(0.0)], spread_of(neg) or 0.0
                past = [strictest + m * spread for m in MARGINS]
                probe = OpenSet(cfg.rule, background=bank)
                if cfg.decision == "segments":  # one decision per segment, as for a clip
                    top = score(adapted, feats, probe).max(-1) if len(feats) else None
                    best = np.zeros(0, np.int64) if top is None else top.indices.numpy()
                    scores = np.zeros(0) if top is None else top.values.double().numpy()
                else:
                    values = score(adapted, feats, probe)
                    best, scores = smoothed_scores(values, settings.smooth)
                # each variant: verify every hop (None), or a cascade's verified hops
                variants_k = {None: (None, best, scores)}
                if cfg.cascade:
                    first = stage1_scores(adapted, feats)
                    for f in cfg.cascade:
                        rule = calibrate_stage1(adapted, f, probe)
                        ver = verified_hops(first >= rule.threshold, rule.stride)
                        variants_k[f] = (ver, *cascade_scores(values, ver, settings.smooth))
                for f, (ver, b, s) in variants_k.items():
                    r = results[(name, f, k)]
                    r.hops += len(times)
                    r.verified_hops += len(times) if ver is None else int(ver.sum())
                    count(r, stream, hours, grid, thresholds, past, cfg, times, b, s,
                          ver, settings)
        bar.update(1)
    bar.close()
    return list(results.values())


def segment_features(wave: np.ndarray, frontend: FrontendConfig,
                     settings: SegmentSettings) -> tuple[np.ndarray, Tensor]:
    """``(decision times [segments], features [segments, 1, F, frames])`` of a recorded
    stream's speech segments, as :class:`metavox.kws.segments.Segmenter` cuts them live."""
    segments = segment_stream(wave, frontend.sample_rate, frontend.num_samples, settings)
    if not segments:
        return np.zeros(0), torch.zeros(0, 1, frontend.num_features, frontend.num_frames)
    windows = [g.window for g in segments]
    feats = torch.cat([featurize_waves(windows[i:i + 64], frontend)
                       for i in range(0, len(windows), 64)])
    return np.array([g.time for g in segments]), feats


def cascade_name(method: str, far: float | None) -> str:
    """A result row's method: the method, or its cascade at stage-1 rate ``far``."""
    return method if far is None else f"{method}, cascade (stage 1 at {far:g})"


def count(r: StreamResult, stream: TestStream, hours: float, grid, thresholds: list[float],
          past: list[float], cfg: StreamConfig, times: np.ndarray, best: np.ndarray,
          scores: np.ndarray, verified: np.ndarray | None, settings: SpotSettings) -> None:
    """Add one stream's outcomes at every threshold to ``r`` (``verified``: the hops a
    cascade verified, with ``best``, ``scores`` its own (:func:`cascade_scores`), or
    ``None`` for every hop)."""
    from metavox.kws.cascade import cascade_triggered

    r.speakers = sorted(set(r.speakers) | set(stream.speakers))
    r.nontarget_vocabulary = sorted(set(r.nontarget_vocabulary) | {
        w for p in stream.placements if not p.target for w in p.word.split()})
    r.voices = sorted(set(r.voices) | set(stream.voices))
    r.targets += sum(p.target for p in stream.placements)
    r.nontarget_words += stream.nontarget_words
    r.hours += hours
    points = [(target, t, r.hits, r.false_accepts, j)
              for j, (target, t) in enumerate(zip(grid, thresholds, strict=True))]
    points += [(None, t, r.margin_hits, r.margin_false_accepts, j)
               for j, t in enumerate(past)]
    for target, threshold, hit_counts, false_counts, j in points:
        if cfg.decision == "segments":
            fired = np.flatnonzero(scores >= threshold)
        elif verified is None:
            fired = triggered(times, best, scores, threshold,
                              settings.refractory_seconds)
        else:
            fired = cascade_triggered(times, best, scores, verified, threshold,
                                      settings.refractory_seconds)
        got = match(stream, stream.words, times, best, fired, cfg.tolerance)
        hit_counts[j] += sum(o.hit for o in got)
        false_counts[j] += sum(not o.hit for o in got)
        if target == cfg.operating_point:
            r.latencies += [o.latency for o in got if o.hit]
            r.add_breakdown(stream, got, hours)
