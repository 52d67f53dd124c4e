"""The service's state: SQLite (profiles → words → clips → adapted model versions) and a
data folder (clips as FLAC named by their content hash, adapted models as safetensors).

SQLite runs in WAL mode; the schema carries a version, and :data:`MIGRATIONS` bring an
older database up to date when it is opened. A model version's row is written only after
its file is complete (written atomically), so a process killed while adapting leaves no
half-done version behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from metavox.storage import atomic_write

#: schema version -> the statements that bring version - 1 up to it
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE profiles (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,
           created REAL NOT NULL)""",
        """CREATE TABLE words (id INTEGER PRIMARY KEY,
           profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
           name TEXT NOT NULL, UNIQUE (profile_id, name))""",
        """CREATE TABLE clips (id INTEGER PRIMARY KEY,
           word_id INTEGER NOT NULL REFERENCES words(id) ON DELETE CASCADE,
           sha256 TEXT NOT NULL, seconds REAL NOT NULL, sample_rate INTEGER NOT NULL,
           created REAL NOT NULL)""",
        """CREATE TABLE models (id INTEGER PRIMARY KEY,
           profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
           version INTEGER NOT NULL, file TEXT NOT NULL, words TEXT NOT NULL,
           open_set TEXT NOT NULL, seconds REAL NOT NULL, created REAL NOT NULL,
           UNIQUE (profile_id, version))""",
    ],
    # what the enrollment said to expect (metavox.pipeline.expect), JSON; NULL before
    2: ["ALTER TABLE models ADD COLUMN expectations TEXT"],
}
SCHEMA_VERSION = max(MIGRATIONS)

#: names of profiles and words: letters, digits, space, '-', '_', '.' (not leading), 1-64
NAME = re.compile(r"^[\w][\w .'-]{0,63}$", re.UNICODE)


class StoreError(ValueError):
    """A request the store refuses; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def check_name(kind: str, name: str) -> str:
    """``name`` if it is a safe profile or word name (it never becomes a path)."""
    if "\x00" in name or not NAME.match(name) or name.strip() != name or ".." in name:
        raise StoreError(f"{kind} name {name[:80]!r} is not allowed: use 1-64 letters, digits, "
                         "spaces, '-', '_', '.' or \"'\", starting with a letter or digit")
    return name


@dataclass(frozen=True)
class Clip:
    id: int
    word: str
    sha256: str
    seconds: float
    sample_rate: int


class Store:
    """The database and data folder of one service (thread-safe: one lock)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        (self.folder / "clips").mkdir(parents=True, exist_ok=True)
        (self.folder / "models").mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.folder / "metavox.sqlite3", check_same_thread=False,
                                  isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.lock = threading.RLock()
        self._migrate()
        # what a killed process left half-written (never a finished file: those are renamed
        # into place whole, and a model's row is written after its file)
        for stale in (*self.folder.glob("clips/.*.tmp"), *self.folder.glob("models/.*.tmp")):
            stale.unlink(missing_ok=True)

    def _migrate(self) -> None:
        with self.lock:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.folder}: database schema {version} is newer than this "
                                 f"metavox ({SCHEMA_VERSION}); upgrade metavox", 500)
            for v in range(version + 1, SCHEMA_VERSION + 1):
                self.db.execute("BEGIN")
                for statement in MIGRATIONS[v]:
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {v}")
                self.db.execute("COMMIT")

    # -- profiles and words -----------------------------------------------------------
    def create_profile(self, name: str) -> None:
        check_name("profile", name)
        with self.lock:
            try:
                self.db.execute("INSERT INTO profiles (name, created) VALUES (?, ?)",
                                (name, time.time()))
            except sqlite3.IntegrityError:
                raise StoreError(f"profile {name!r} already exists", 409) from None

    def profiles(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.db.execute("SELECT name FROM profiles ORDER BY name")]

    def profile_id(self, name: str) -> int:
        with self.lock:
            row = self.db.execute("SELECT id FROM profiles WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise StoreError(f"no profile {name!r}", 404)
        return int(row[0])

    def delete_profile(self, name: str) -> None:
        pid = self.profile_id(name)
        with self.lock:
            self.db.execute("DELETE FROM profiles WHERE id = ?", (pid,))

    def words(self, profile: str) -> list[str]:
        pid = self.profile_id(profile)
        with self.lock:
            return [r[0] for r in self.db.execute(
                "SELECT name FROM words WHERE profile_id = ? ORDER BY name", (pid,))]

    # -- clips ------------------------------------------------------------------------
    def add_clip(self, profile: str, word: str, wave: np.ndarray, sample_rate: int, *,
                 max_words: int, max_clips: int) -> Clip:
        """Store a decoded clip (mono float32) for ``word`` as FLAC named by its hash."""
        check_name("word", word)
        pid = self.profile_id(profile)
        buf = io.BytesIO()
        sf.write(buf, wave, sample_rate, format="FLAC", subtype="PCM_16")
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        with self.lock:
            row = self.db.execute("SELECT id FROM words WHERE profile_id = ? AND name = ?",
                                  (pid, word)).fetchone()
            if row is None:
                n = self.db.execute("SELECT COUNT(*) FROM words WHERE profile_id = ?",
                                    (pid,)).fetchone()[0]
                if n >= max_words:
                    raise StoreError(f"profile {profile!r} has {n} words, the most allowed; "
                                     "delete one first", 409)
                wid = self.db.execute("INSERT INTO words (profile_id, name) VALUES (?, ?)",
                                      (pid, word)).lastrowid
            else:
                wid = row[0]
            n = self.db.execute("SELECT COUNT(*) FROM clips WHERE word_id = ?",
                                (wid,)).fetchone()[0]
            if n >= max_clips:
                raise StoreError(f"word {word!r} has {n} clips, the most allowed; delete one "
                                 "first", 409)
            path = self.folder / "clips" / f"{digest}.flac"
            if not path.exists():
                atomic_write(path, data)
            seconds = len(wave) / sample_rate
            cid = self.db.execute(
                "INSERT INTO clips (word_id, sha256, seconds, sample_rate, created) "
                "VALUES (?, ?, ?, ?, ?)", (wid, digest, seconds, sample_rate, time.time())
            ).lastrowid
        return Clip(int(cid), word, digest, seconds, sample_rate)

    def clips(self, profile: str, word: str | None = None) -> list[Clip]:
        pid = self.profile_id(profile)
        query = ("SELECT c.id, w.name, c.sha256, c.seconds, c.sample_rate FROM clips c "
                 "JOIN words w ON c.word_id = w.id WHERE w.profile_id = ?")
        args: tuple = (pid,)
        if word is not None:
            query += " AND w.name = ?"
            args = (pid, word)
        with self.lock:
            rows = self.db.execute(query + " ORDER BY w.name, c.id", args).fetchall()
        return [Clip(int(r[0]), r[1], r[2], float(r[3]), int(r[4])) for r in rows]

    def clip_path(self, clip: Clip) -> Path:
        return self.folder / "clips" / f"{clip.sha256}.flac"

    def delete_clip(self, profile: str, clip_id: int) -> None:
        pid = self.profile_id(profile)
        with self.lock:
            cur = self.db.execute(
                "DELETE FROM clips WHERE id = ? AND word_id IN "
                "(SELECT id FROM words WHERE profile_id = ?)", (clip_id, pid))
            if cur.rowcount == 0:
                raise StoreError(f"profile {profile!r} has no clip {clip_id}", 404)
            self.db.execute("DELETE FROM words WHERE profile_id = ? AND id NOT IN "
                            "(SELECT word_id FROM clips)", (pid,))

    # -- models -----------------------------------------------------------------------
    def next_model_file(self, profile: str) -> tuple[int, Path]:
        pid = self.profile_id(profile)
        with self.lock:
            v = self.db.execute("SELECT COALESCE(MAX(version), 0) FROM models WHERE "
                                "profile_id = ?", (pid,)).fetchone()[0] + 1
        return int(v), self.folder / "models" / f"profile{pid}-v{v}.safetensors"

    def add_model(self, profile: str, version: int, file: Path, words: list[str],
                  open_set: str, seconds: float, expectations: str | None = None) -> None:
        pid = self.profile_id(profile)
        with self.lock:
            self.db.execute(
                "INSERT INTO models (profile_id, version, file, words, open_set, seconds, "
                "created, expectations) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (pid, version, file.name, "\n".join(words), open_set, seconds, time.time(),
                 expectations))

    def model_info(self, profile: str) -> dict | None:
        """The latest model version's record (version, words, open set, seconds, what its
        enrollment said to expect or ``None``), if any."""
        row = self._latest(profile)
        if row is None:
            return None
        return {"version": int(row[0]), "words": row[2].split("\n"),
                "open_set": json.loads(row[3]), "seconds": float(row[4]),
                "expectations": json.loads(row[5]) if row[5] else None}

    def latest_model(self, profile: str) -> tuple[int, Path] | None:
        """The latest model version and its file, if any."""
        row = self._latest(profile)
        return None if row is None else (int(row[0]), self.folder / "models" / row[1])

    def _latest(self, profile: str) -> tuple | None:
        pid = self.profile_id(profile)
        with self.lock:
            return self.db.execute("SELECT version, file, words, open_set, seconds, "
                                   "expectations FROM models WHERE profile_id = ? "
                                   "ORDER BY version DESC LIMIT 1", (pid,)).fetchone()
