"""Corpora, splits, feature cache and episode samplers: corpus -> episode batches."""

from metavox.data.batch import EpisodeBatch
from metavox.data.cache import (
    FeatureCache,
    FeatureStore,
    build_feature_store,
    default_cache_dir,
    write_feature_store,
)
from metavox.data.corpus import (
    PRESETS,
    Corpus,
    CorpusError,
    ScanReport,
    Utterance,
    compile_pattern,
    detect_corpus,
    load_corpus,
    scan_corpus,
)
from metavox.data.episodes import (
    ClassEpisodeSampler,
    EpisodeDataset,
    EpisodeError,
    EpisodeSampler,
    MixtureSampler,
    SpeakerEpisodeSampler,
    TaskSource,
)
from metavox.data.splits import Split, SplitPart, make_split

__all__ = [
    "EpisodeBatch",
    "PRESETS",
    "Corpus",
    "CorpusError",
    "ScanReport",
    "Utterance",
    "compile_pattern",
    "detect_corpus",
    "load_corpus",
    "scan_corpus",
    "Split",
    "SplitPart",
    "make_split",
    "FeatureCache",
    "FeatureStore",
    "write_feature_store",
    "build_feature_store",
    "default_cache_dir",
    "ClassEpisodeSampler",
    "SpeakerEpisodeSampler",
    "EpisodeSampler",
    "MixtureSampler",
    "TaskSource",
    "EpisodeDataset",
    "EpisodeError",
]
