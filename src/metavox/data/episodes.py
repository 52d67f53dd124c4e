"""N-way K-shot episodes over cached features: tasks by class or by speaker.

Episode ``i`` of a sampler with seed ``s`` is a pure function of ``(s, i)`` (its generator
is ``np.random.default_rng([s, i])``), so batches are identical in any DataLoader worker,
in any order, and can be sharded by index across ranks. Batch ``b`` of ``T`` tasks holds
episodes ``b*T .. b*T+T-1``.

Inside a task the support and the query are grouped by class (label ``0`` first), and the
``N`` classes get the labels ``0..N-1`` in a random order drawn per task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from metavox.data.batch import EpisodeBatch
from metavox.data.cache import FeatureStore

#: ``augment(features [n, F, frames], rng) -> features``, applied per task.
Augment = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]

_MAX_TRIES = 200


class EpisodeError(ValueError):
    """The store cannot give the requested episodes (too few classes, clips or speakers)."""


def _check_sizes(ways: int, shots: int, queries: int) -> None:
    for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _kth_largest(values: Sequence[int], k: int) -> int:
    """The ``k``-th largest value (0 when there are fewer than ``k``)."""
    ordered = sorted(values, reverse=True)
    return ordered[k - 1] if len(ordered) >= k else 0


def _can_split(counts: Sequence[int], shots: int, queries: int) -> bool:
    """Whether whole speakers (clip ``counts``) can be split into >= shots and >= queries."""
    total = sum(counts)
    if total < shots + queries:
        return False
    reach = 1  # bit s set: some subset of speakers has s clips
    for c in counts:
        reach |= reach << c
    window = reach >> shots
    return window & ((1 << (total - queries - shots + 1)) - 1) != 0


class TaskSource:
    """Anything that gives numbered meta-batches of episodes: ``sample_range(first, n)``
    (episodes ``first .. first+n-1``), deterministic in the episode numbers."""

    ways: int
    shots: int
    queries: int

    def sample_range(self, first: int, meta_batch: int) -> EpisodeBatch:
        raise NotImplementedError

    def sample(self, meta_batch: int = 1, index: int = 0) -> EpisodeBatch:
        """Batch ``index`` of ``meta_batch`` tasks (episodes ``index*meta_batch + t``)."""
        if meta_batch < 1:
            raise ValueError(f"meta_batch must be >= 1, got {meta_batch}")
        return self.sample_range(int(index) * meta_batch, meta_batch)

    def dataset(self, meta_batch: int, length: int, *, start: int = 0, rank: int = 0,
                world: int = 1) -> EpisodeDataset:
        """An :class:`EpisodeDataset` of ``length`` batches over this sampler (rank
        ``rank``'s share of them when ``world`` ranks train together)."""
        return EpisodeDataset(self, meta_batch, length, start=start, rank=rank, world=world)


class EpisodeSampler(TaskSource):
    """Base of the samplers: seeding, feature gathering, batching, augmentation."""

    def __init__(
        self,
        store: FeatureStore,
        ways: int,
        shots: int,
        queries: int,
        *,
        seed: int,
        channel_dim: bool,
        augment: Augment | None,
    ) -> None:
        _check_sizes(ways, shots, queries)
        self.store = store
        self.ways, self.shots, self.queries = int(ways), int(shots), int(queries)
        self.seed = int(seed)
        self.channel_dim = channel_dim
        self.augment = augment

    def _draw(
        self, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Support rows ``[N, K]``, query rows ``[N, Q]`` and the class names, in label order."""
        raise NotImplementedError

    def episode_rows(self, index: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Store rows of episode ``index``: support ``[N, K]``, query ``[N, Q]``, classes."""
        return self._draw(np.random.default_rng([self.seed, int(index)]))

    def sample_range(self, first: int, meta_batch: int) -> EpisodeBatch:
        """Episodes ``first .. first + meta_batch - 1`` as one batch (a rank's slice of a
        global batch in distributed training)."""
        if meta_batch < 1 or first < 0:
            raise ValueError(f"need first >= 0 and meta_batch >= 1, got {first}, {meta_batch}")
        N, K, Q = self.ways, self.shots, self.queries
        sup_rows, qry_rows, classes, speakers = [], [], [], []
        for t in range(meta_batch):
            sup, qry, names = self.episode_rows(first + t)
            sup_rows.append(sup.reshape(-1))
            qry_rows.append(qry.reshape(-1))
            classes.append(names)
            used = {self.store.speakers[r] for r in (*sup_rows[-1], *qry_rows[-1])}
            speakers.append(sorted(s for s in used if s is not None))
        shape = self.store.shape[1:]
        support_x = torch.from_numpy(self.store.take(np.concatenate(sup_rows)))
        support_x = support_x.reshape(meta_batch, N * K, *shape)
        query_x = torch.from_numpy(self.store.take(np.concatenate(qry_rows)))
        query_x = query_x.reshape(meta_batch, N * Q, *shape)
        if self.augment is not None:
            aug_s, aug_q = [], []
            for t in range(meta_batch):
                rng = np.random.default_rng([self.seed, first + t, 1])
                aug_s.append(self.augment(support_x[t], rng))
                aug_q.append(self.augment(query_x[t], rng))
            support_x, query_x = torch.stack(aug_s), torch.stack(aug_q)
        if self.channel_dim:
            support_x, query_x = support_x.unsqueeze(2), query_x.unsqueeze(2)
        labels = torch.arange(N, dtype=torch.int64)
        support_y = labels.repeat_interleave(K).expand(meta_batch, -1).contiguous()
        query_y = labels.repeat_interleave(Q).expand(meta_batch, -1).contiguous()
        return EpisodeBatch(support_x, support_y, query_x, query_y, classes, speakers)


class ClassEpisodeSampler(EpisodeSampler):
    """N-way K-shot Q-query tasks over classes of a feature store.

    ``labels`` restricts the classes. With ``speaker_disjoint`` no speaker of a task's
    query is heard in its support (clips with no speaker are left out). A class with fewer
    than ``shots + queries`` clips is an error (``too_few="raise"``) or is left out
    (``"drop"``). ``augment(x, rng)`` is applied to each task's support and query.
    """

    def __init__(
        self,
        store: FeatureStore,
        ways: int,
        shots: int,
        queries: int,
        *,
        labels: Sequence[str] | None = None,
        speaker_disjoint: bool = False,
        too_few: Literal["raise", "drop"] = "raise",
        seed: int = 0,
        channel_dim: bool = True,
        augment: Augment | None = None,
    ) -> None:
        super().__init__(store, ways, shots, queries, seed=seed, channel_dim=channel_dim,
                         augment=augment)
        if too_few not in ("raise", "drop"):
            raise ValueError(f"too_few must be 'raise' or 'drop', got {too_few!r}")
        self.speaker_disjoint = speaker_disjoint
        by_label = store.by_label()
        names = list(by_label) if labels is None else list(dict.fromkeys(labels))
        unknown = [x for x in names if x not in by_label]
        if unknown:
            raise EpisodeError(f"labels {unknown[:5]} are not in the store; it has "
                               f"{len(by_label)}: {', '.join(list(by_label)[:12])}")
        need = self.shots + self.queries
        rows: dict[str, np.ndarray] = {}
        ok: dict[str, bool] = {}
        for name in names:
            idx = by_label[name]
            if speaker_disjoint:
                idx = idx[store.speaker_ids[idx] >= 0]
                per_spk = np.bincount(store.speaker_ids[idx]) if len(idx) else np.zeros(0)
                ok[name] = _can_split([int(c) for c in per_spk if c], self.shots, self.queries)
            else:
                ok[name] = len(idx) >= need
            rows[name] = idx
        short = [x for x in names if not ok[x]]
        good = [x for x in names if ok[x]]
        if short and (too_few == "raise" or len(good) < self.ways):
            raise EpisodeError(self._too_few_message(short, good, rows, too_few))
        self.classes = good
        self._rows = [rows[x] for x in good]
        if speaker_disjoint:
            self._spk = [store.speaker_ids[r] for r in self._rows]
            self._n_spk = len(store.speaker_names)
            self._p = float(np.clip(self.shots / need, 0.1, 0.9))
        if len(good) < self.ways:
            raise EpisodeError(f"{self.ways}-way episodes need {self.ways} classes; only "
                               f"{len(good)} given: {good}")

    def _too_few_message(
        self, short: list[str], good: list[str], rows: dict[str, np.ndarray], too_few: str
    ) -> str:
        N, K, Q = self.ways, self.shots, self.queries
        counts = {x: len(r) for x, r in rows.items()}
        per = ("clips per class, from speakers that split into support and query"
               if self.speaker_disjoint else "clips per class")
        listed = ", ".join(f"{x!r} ({counts[x]})" for x in short[:6])
        listed += " ..." if len(short) > 6 else ""
        qualify = f"{len(good)} of {len(rows)} classes qualify"
        if too_few == "raise" and len(good) >= N:
            msg = (f"class {short[0]!r} has {counts[short[0]]} clips; {K}-shot {Q}-query "
                   f"episodes need {K + Q} {per} (short: {listed}); {qualify}")
            if not self.speaker_disjoint:
                msg += (f"; shots+queries <= {min(counts.values())} works with all "
                        f"{len(rows)} classes")
            return msg + ". Pass too_few='drop' to leave short classes out, choose labels, or " \
                "lower shots/queries"
        msg = (f"{N}-way {K}-shot {Q}-query episodes need {N} classes with {K + Q} {per}; "
               f"{qualify} (short: {listed})")
        if not self.speaker_disjoint:
            best = _kth_largest(list(counts.values()), N)
            msg += f"; with {N} ways the most shots+queries is {best}"
        msg += f". Lower shots/queries, or ways to at most {len(good)}"
        return msg + (", or turn speaker_disjoint off" if self.speaker_disjoint else "")

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
        N, K, Q = self.ways, self.shots, self.queries
        if not self.speaker_disjoint:
            picked = rng.choice(len(self.classes), N, replace=False)
            sup = np.empty((N, K), dtype=np.int64)
            qry = np.empty((N, Q), dtype=np.int64)
            for j, c in enumerate(picked):
                r = self._rows[c]
                take = r[rng.choice(len(r), K + Q, replace=False)]
                sup[j], qry[j] = take[:K], take[K:]
            return sup, qry, [self.classes[c] for c in picked]
        for _ in range(_MAX_TRIES):
            picked = rng.choice(len(self.classes), N, replace=False)
            side = rng.random(self._n_spk) < self._p  # True: the speaker is support-only
            sides = [side[self._spk[c]] for c in picked]
            if all(s.sum() >= K and (~s).sum() >= Q for s in sides):
                break
        else:
            raise EpisodeError(
                f"no speaker-disjoint {N}-way {K}-shot {Q}-query task found in {_MAX_TRIES} "
                "draws: too few speakers per class; lower shots/queries or ways"
            )
        sup = np.empty((N, K), dtype=np.int64)
        qry = np.empty((N, Q), dtype=np.int64)
        for j, (c, s) in enumerate(zip(picked, sides, strict=True)):
            r = self._rows[c]
            sup[j] = rng.choice(r[s], K, replace=False)
            qry[j] = rng.choice(r[~s], Q, replace=False)
        return sup, qry, [self.classes[c] for c in picked]


class SpeakerEpisodeSampler(EpisodeSampler):
    """Tasks of one speaker each: ``N`` words that speaker said at least ``K + Q`` times,
    support and query both from that speaker (speaker-as-task adaptation)."""

    def __init__(
        self,
        store: FeatureStore,
        ways: int,
        shots: int,
        queries: int,
        *,
        labels: Sequence[str] | None = None,
        speakers: Sequence[str] | None = None,
        seed: int = 0,
        channel_dim: bool = True,
        augment: Augment | None = None,
    ) -> None:
        super().__init__(store, ways, shots, queries, seed=seed, channel_dim=channel_dim,
                         augment=augment)
        need = self.shots + self.queries
        lab_ok = None if labels is None else set(labels)
        spk_ok = None if speakers is None else set(speakers)
        table: dict[str, dict[str, np.ndarray]] = {}
        for spk, idx in store.by_speaker().items():
            if spk_ok is not None and spk not in spk_ok:
                continue
            words: dict[str, np.ndarray] = {}
            for lab in np.unique(store.label_ids[idx]):
                name = store.label_names[lab]
                if lab_ok is None or name in lab_ok:
                    words[name] = idx[store.label_ids[idx] == lab]
            table[spk] = words
        if not table:
            raise EpisodeError("the store has no clips with a known speaker (after filters)")
        self._tasks: list[tuple[str, list[str], list[np.ndarray]]] = []
        for spk, words in table.items():
            names = [w for w, r in words.items() if len(r) >= need]
            if len(names) >= self.ways:
                self._tasks.append((spk, names, [words[w] for w in names]))
        if not self._tasks:
            best = max(table, key=lambda s: (sum(len(r) >= need for r in table[s].values()),
                                            _kth_largest([len(r) for r in table[s].values()],
                                                         self.ways)))
            n_best = sum(len(r) >= need for r in table[best].values())
            counts = [len(r) for r in table[best].values()]
            top = max((_kth_largest([len(r) for r in w.values()], self.ways)
                       for w in table.values()), default=0)
            raise EpisodeError(
                f"no speaker said {self.ways} words at least shots+queries = {need} times each; "
                f"best: speaker {best!r} has {n_best} such words (clips per word: "
                f"{sorted(counts, reverse=True)[:10]}); with {self.ways} ways the most "
                f"shots+queries any speaker allows is {top}"
            )
        self.speakers = [t[0] for t in self._tasks]

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
        N, K, Q = self.ways, self.shots, self.queries
        _spk, names, rows = self._tasks[int(rng.integers(len(self._tasks)))]
        picked = rng.choice(len(names), N, replace=False)
        sup = np.empty((N, K), dtype=np.int64)
        qry = np.empty((N, Q), dtype=np.int64)
        for j, c in enumerate(picked):
            take = rng.choice(rows[c], K + Q, replace=False)
            sup[j], qry[j] = take[:K], take[K:]
        return sup, qry, [names[c] for c in picked]


class MixtureSampler(TaskSource):
    """Episodes drawn from several samplers (corpora) with stated weights: episode ``i``
    comes from sampler ``k`` with probability ``weights[k] / sum(weights)``, chosen by a
    generator seeded with ``(seed, i)``, and is that sampler's own episode ``i``. So the
    mixture is deterministic per episode, like every sampler, and any worker count or
    rank split gives the same tasks.

    The samplers must agree on ways, shots, queries and feature shape.
    """

    def __init__(self, samplers: Sequence[TaskSource], weights: Sequence[float], *,
                 seed: int) -> None:
        if not samplers or len(samplers) != len(weights):
            raise ValueError(f"need one weight per sampler, got {len(samplers)} samplers and "
                             f"{len(weights)} weights")
        w = np.asarray(weights, dtype=np.float64)
        if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
            raise ValueError(f"weights must be >= 0, finite and not all 0, got {list(weights)}")
        sizes = {(s.ways, s.shots, s.queries) for s in samplers}
        if len(sizes) != 1:
            raise ValueError(f"the samplers disagree on (ways, shots, queries): {sorted(sizes)}")
        self.samplers = list(samplers)
        self.probs = w / w.sum()
        self.seed = int(seed)
        self.ways, self.shots, self.queries = next(iter(sizes))

    def source(self, index: int) -> int:
        """Which sampler episode ``index`` comes from."""
        rng = np.random.default_rng([self.seed, int(index), 2])
        return int(rng.choice(len(self.samplers), p=self.probs))

    def sample_range(self, first: int, meta_batch: int) -> EpisodeBatch:
        if meta_batch < 1 or first < 0:
            raise ValueError(f"need first >= 0 and meta_batch >= 1, got {first}, {meta_batch}")
        tasks = [self.samplers[self.source(i)].sample_range(i, 1)
                 for i in range(first, first + meta_batch)]
        shapes = {tuple(t.support_x.shape[2:]) for t in tasks}
        if len(shapes) != 1:
            raise ValueError(f"the samplers give features of different shapes: {sorted(shapes)}")
        return EpisodeBatch(
            *(torch.cat([getattr(t, f) for t in tasks])
              for f in ("support_x", "support_y", "query_x", "query_y")),
            [c for t in tasks for c in t.classes], [s for t in tasks for s in t.speakers])


class EpisodeDataset(Dataset):
    """``length`` batches of ``meta_batch`` tasks; item ``b`` is ``sampler.sample(meta_batch,
    start + b)``. Use with ``DataLoader(dataset, batch_size=None, num_workers=k)``: every
    worker count gives the same batches.

    With ``world`` ranks, rank ``r`` gets its slice of each global batch: ``meta_batch /
    world`` consecutive episodes starting at ``r * meta_batch / world``, so the ranks
    together see exactly the tasks of one process with the whole meta-batch.
    """

    def __init__(self, sampler: TaskSource, meta_batch: int, length: int, *, start: int = 0,
                 rank: int = 0, world: int = 1):
        if meta_batch < 1 or length < 0:
            raise ValueError(f"need meta_batch >= 1 and length >= 0, got {meta_batch}, {length}")
        if world < 1 or not 0 <= rank < world or meta_batch % world:
            raise ValueError(f"meta-batch {meta_batch} cannot be split evenly over {world} "
                             f"ranks (rank {rank}): make it a multiple of the number of ranks")
        self.sampler = sampler
        self.meta_batch = int(meta_batch)
        self.length = int(length)
        self.start = int(start)
        self.share = self.meta_batch // world
        self.offset = rank * self.share

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, b: int) -> EpisodeBatch:
        if not 0 <= b < self.length:
            raise IndexError(f"batch {b} out of range for {self.length} batches")
        first = (self.start + b) * self.meta_batch + self.offset
        return self.sampler.sample_range(first, self.share)


#: the query label of an unknown word or a background in an open-set task
UNKNOWN = -1


def centroid_neighbours(store: FeatureStore, labels: Sequence[str] | None = None
                        ) -> dict[str, list[str]]:
    """Each class's other classes, most similar first, by the cosine similarity of their
    centroids in ``store``'s own (frozen) features: every clip flattened and L2-normalised,
    averaged per class. Computed once, so "sounds like" is a reproducible table."""
    by_label = store.by_label()
    names = [x for x in (labels if labels is not None else by_label) if x in by_label]
    cents = []
    for name in names:
        x = store.take(np.sort(by_label[name])).reshape(len(by_label[name]), -1)
        x = x.astype(np.float64)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        c = x.mean(0)
        cents.append(c / max(np.linalg.norm(c), 1e-12))
    sim = np.stack(cents) @ np.stack(cents).T if cents else np.zeros((0, 0))
    out = {}
    for i, name in enumerate(names):
        order = sorted((j for j in range(len(names)) if j != i), key=lambda j: (-sim[i, j], j))
        out[name] = [names[j] for j in order]
    return out


class OpenSetEpisodeSampler(ClassEpisodeSampler):
    """Class episodes whose query also holds *unknowns*: clips of words that are not in
    the task's support (label :data:`UNKNOWN`), and backgrounds.

    The support and the known queries are exactly :class:`ClassEpisodeSampler`'s
    episode with the same seed (the unknowns are drawn after them from the same
    generator). Each task adds ``unknown_words`` words, never enrolled in it, with
    ``unknown_queries`` clips each, and ``background_queries`` rows of ``backgrounds``
    (features of noises, silence, recorded rooms: ``[B, ...]`` as the store gives a clip).

    Unknown words prefer hard negatives: each slot is, with probability
    ``hard_negatives``, a word that sounds like an enrolled one, i.e. among the
    ``hard_pool`` nearest classes of any enrolled word by :func:`centroid_neighbours`
    (computed once from the store), or listed for it in ``confusable`` (word -> its
    near-homophones, e.g. from the synthetic corpus; those present in the store are
    preferred first); otherwise any other word.
    """

    def __init__(
        self,
        store: FeatureStore,
        ways: int,
        shots: int,
        queries: int,
        *,
        unknown_words: int = 2,
        unknown_queries: int = 5,
        backgrounds: np.ndarray | torch.Tensor | None = None,
        background_queries: int = 0,
        hard_negatives: float = 0.5,
        hard_pool: int = 3,
        confusable: dict[str, Sequence[str]] | None = None,
        neighbours: dict[str, Sequence[str]] | None = None,
        **options,
    ) -> None:
        super().__init__(store, ways, shots, queries, **options)
        for name, value in (("unknown_words", unknown_words),
                            ("unknown_queries", unknown_queries),
                            ("background_queries", background_queries),
                            ("hard_pool", hard_pool)):
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not 0.0 <= hard_negatives <= 1.0:
            raise ValueError(f"hard_negatives must be a probability in [0, 1], got "
                             f"{hard_negatives!r}")
        if unknown_words and unknown_queries < 1:
            raise ValueError("unknown_queries must be >= 1 when unknown_words > 0")
        if unknown_words + ways > len(self.classes):
            raise EpisodeError(f"{ways} enrolled words and {unknown_words} unknown words per "
                               f"task need {ways + unknown_words} classes; the store has "
                               f"{len(self.classes)}: lower episodes.unknown_words")
        if background_queries and (backgrounds is None or len(backgrounds) == 0):
            raise EpisodeError("background_queries > 0 needs background clips")
        self.unknown_words, self.unknown_queries = int(unknown_words), int(unknown_queries)
        self.background_queries = int(background_queries)
        self.hard_negatives, self.hard_pool = float(hard_negatives), int(hard_pool)
        self.backgrounds = (None if backgrounds is None else
                            torch.as_tensor(np.asarray(backgrounds, dtype=np.float32)))
        if self.backgrounds is not None and tuple(self.backgrounds.shape[1:]) != \
                tuple(store.shape[1:]):
            raise ValueError(f"backgrounds have features {tuple(self.backgrounds.shape[1:])}, "
                             f"the store {tuple(store.shape[1:])}")
        index = {c: i for i, c in enumerate(self.classes)}
        table = centroid_neighbours(store, self.classes) if neighbours is None else neighbours
        self.hard: list[list[int]] = []
        for c in self.classes:
            near = [w for w in (confusable or {}).get(c, ()) if w in index and w != c]
            near += [w for w in table.get(c, ())[:self.hard_pool] if w in index and w != c]
            self.hard.append(list(dict.fromkeys(index[w] for w in near)))

    def open_rows(self, index: int) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray,
                                             list[str], np.ndarray]:
        """Episode ``index``: support ``[N, K]`` and known query ``[N, Q]`` store rows and
        the enrolled classes (as :meth:`episode_rows`), then the unknown words' store rows
        ``[U * Qu]``, the unknown words, and the background rows ``[Qb]``."""
        rng = np.random.default_rng([self.seed, int(index)])
        sup, qry, names = self._draw(rng)
        enrolled = {self.classes.index(n) for n in names}
        hard = [j for n in names for j in self.hard[self.classes.index(n)]]
        unknown: list[int] = []
        for _ in range(self.unknown_words):
            taken = enrolled | set(unknown)
            near = [j for j in dict.fromkeys(hard) if j not in taken]
            rest = [j for j in range(len(self.classes)) if j not in taken]
            pick_hard = near and rng.random() < self.hard_negatives
            choices = near if pick_hard else rest
            unknown.append(int(choices[int(rng.integers(len(choices)))]))
        rows = [self._rows[j][rng.choice(len(self._rows[j]), self.unknown_queries,
                                         replace=len(self._rows[j]) < self.unknown_queries)]
                for j in unknown]
        unk = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        bg = (rng.choice(len(self.backgrounds), self.background_queries,
                         replace=len(self.backgrounds) < self.background_queries)
              if self.background_queries else np.zeros(0, dtype=np.int64))
        return sup, qry, names, unk.astype(np.int64), [self.classes[j] for j in unknown], bg

    def sample_range(self, first: int, meta_batch: int) -> EpisodeBatch:
        """As :class:`ClassEpisodeSampler`'s batch, with each task's unknown-word clips and
        backgrounds appended to its query, labelled :data:`UNKNOWN`."""
        known = super().sample_range(first, meta_batch)
        extra, words = [], []
        for t in range(meta_batch):
            *_, unk, names, bg = self.open_rows(first + t)
            x = torch.from_numpy(self.store.take(unk)) if len(unk) else \
                torch.zeros(0, *self.store.shape[1:])
            if len(bg):
                x = torch.cat([x, self.backgrounds[torch.from_numpy(bg)]])
            if self.augment is not None and len(x):
                x = self.augment(x, np.random.default_rng([self.seed, first + t, 3]))
            extra.append(x.to(known.query_x.dtype))
            words.append(names)
        extra_x = torch.stack(extra)
        if self.channel_dim:
            extra_x = extra_x.unsqueeze(2)
        extra_y = torch.full(extra_x.shape[:2], UNKNOWN, dtype=known.query_y.dtype)
        return EpisodeBatch(known.support_x, known.support_y,
                            torch.cat([known.query_x, extra_x], 1),
                            torch.cat([known.query_y, extra_y], 1), known.classes,
                            known.speakers, unknown_words=words)
