"""``metavox serve``: an HTTP service (FastAPI) to enroll your words and spot them.

Endpoints (all in the OpenAPI schema at ``/docs``): profiles (create, list, delete);
clips of a word (upload WAV/FLAC/Ogg, list, fetch, delete); adapt a profile (a new model
version with its open-set calibration and how long it took); classify a clip; the
profile's model as ONNX; a WebSocket that takes live 16-bit PCM and sends detections.

Bad input is a JSON error with a 4xx code that names the problem (413 too large, 415 an
unreadable format, 404 unknown, 409 a limit or conflict, 422 a bad name or setting);
requests other than ``/health`` need ``Authorization: Bearer TOKEN`` when a token is set.
Work that takes time (adaptation, classification, export) runs off the event loop, and
adaptations of one profile run one after the other.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from fastapi import FastAPI, File, Request, UploadFile, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from metavox.audio.io import resample
from metavox.kws.spotter import SpotSettings, Spotter, levels
from metavox.pipeline.enroll import (
    Adapted,
    EnrollError,
    check_word_count,
    corpus_negatives,
    default_rule,
    featurize,
    featurize_waves,
    load_adapted,
    negative_pool,
    negative_values,
    open_set_from,
    run_backgrounds,
    save_adapted,
    support_evidence,
    word_limit,
)
from metavox.pipeline.expect import confidence, confidences
from metavox.pipeline.train import load_trained
from metavox.service.store import Store, StoreError

log = logging.getLogger(__name__)

#: the web page: plain HTML, CSS and JavaScript, served as they are (no build step)
STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Limits:
    """What a client may send."""

    max_bytes: int = 2_000_000  # per upload
    max_seconds: float = 5.0  # per clip
    min_seconds: float = 0.1
    sample_rates: tuple[int, ...] = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
    max_words: int = 10
    max_clips: int = 10
    far: float = 0.01  # open-set calibration at adaptation
    min_clips: int = 3  # what the page asks for per word (adaptation needs 1)

    def to_dict(self) -> dict:
        return {"max_bytes": self.max_bytes, "max_seconds": self.max_seconds,
                "min_seconds": self.min_seconds, "sample_rates": list(self.sample_rates),
                "max_words": self.max_words, "max_clips": self.max_clips,
                "min_clips": self.min_clips}


def decode(data: bytes, limits: Limits) -> tuple[np.ndarray, int]:
    """Mono float32 samples and rate of an uploaded file, or a :class:`StoreError`."""
    if len(data) > limits.max_bytes:
        raise StoreError(f"upload of {len(data)} bytes is larger than {limits.max_bytes}", 413)
    if not data:
        raise StoreError("empty upload: send a WAV, FLAC or Ogg file", 415)
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, TypeError, ValueError, sf.LibsndfileError) as err:
        raise StoreError(f"unreadable audio ({str(err).strip()[:120]}): send WAV, FLAC or "
                         "Ogg", 415) from None
    if rate not in limits.sample_rates:
        raise StoreError(f"sample rate {rate} Hz is not accepted; use one of "
                         f"{list(limits.sample_rates)}", 415)
    wave = wave.mean(axis=1)
    seconds = len(wave) / rate
    if not limits.min_seconds <= seconds <= limits.max_seconds:
        raise StoreError(f"clip of {seconds:.2f} s; clips must last {limits.min_seconds}-"
                         f"{limits.max_seconds} s", 413 if seconds > limits.max_seconds else 422)
    if not np.isfinite(wave).all():
        raise StoreError("the audio holds NaN or infinite samples", 422)
    return np.clip(wave, -1, 1).astype(np.float32), int(rate)


class Service:
    """The service's work, independent of HTTP: a run to adapt, a store, cached models."""

    def __init__(self, run: str | Path, data: str | Path, limits: Limits | None = None) -> None:
        self.loaded = load_trained(run)
        self.frontend = self.loaded.frontend
        self.store = Store(data)
        self.limits = limits or Limits()
        # generated and recorded backgrounds: the same for every profile, so made once
        self.backgrounds = run_backgrounds(self.loaded)
        # the run's training words are negatives of every adaptation: reading them once
        # here builds their feature cache if it is cold (minutes, once), not in a request
        corpus_negatives(self.loaded, seed=self.loaded.config.seed)
        self._adapting: dict[str, threading.Lock] = {}
        self._models: dict[tuple[str, int], Adapted] = {}
        self._guard = threading.Lock()
        # classifications run at most one per core at a time (more only thrash the cores);
        # live streams have threads of their own, so a burst of requests cannot starve them
        self._classifying = threading.BoundedSemaphore(os.cpu_count() or 1)
        self.live_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="live")

    def adapt(self, profile: str) -> dict:
        """A new model version of ``profile`` from its clips (one adaptation at a time per
        profile); the version row is written only once its file is complete."""
        with self._guard:
            lock = self._adapting.setdefault(profile, threading.Lock())
        with lock:
            t0 = time.perf_counter()
            log.info("adapting profile %r", profile)
            clips = self.store.clips(profile)
            words = sorted({c.word for c in clips})
            if len(words) < 2:
                raise StoreError(f"profile {profile!r} needs clips of at least 2 words to "
                                 f"adapt; it has {words or 'none'}", 409)
            try:
                check_word_count(self.loaded, len(words))
            except EnrollError as err:
                raise StoreError(str(err), 409) from None
            x = featurize([self.store.clip_path(c) for c in clips], self.frontend)
            y = torch.tensor([words.index(c.word) for c in clips])
            negatives = negative_pool(self.loaded, exclude=words,
                                      backgrounds=self.backgrounds)
            adapted = Adapted(self.loaded.algo.adapt(x, y, classes=words), self.frontend)
            rule = default_rule(self.loaded)
            values, bank = negative_values(adapted, negatives, rule=rule,
                                           seed=self.loaded.config.seed)
            adapted.open_set = open_set_from(values, bank, far=self.limits.far, rule=rule)
            # what to expect: each clip held out, the negatives' false accepts per word
            adapted.evidence = support_evidence(self.loaded, adapted, x, y, values)
            expected = adapted.expectations().to_dict()
            version, path = self.store.next_model_file(profile)
            save_adapted(path, adapted, self.loaded)
            seconds = time.perf_counter() - t0
            self.store.add_model(profile, version, path, words,
                                 json.dumps(adapted.open_set.to_dict()), seconds,
                                 json.dumps(expected))
            self._models[(profile, version)] = adapted
            log.info("adapted profile %r: version %d, %d words, %d clips, %.2f s", profile,
                     version, len(words), len(clips), seconds)
            return {"profile": profile, "version": version, "words": words,
                    "clips": len(clips), "open_set": adapted.open_set.to_dict(),
                    "expectations": expected, "seconds": round(seconds, 3)}

    def model(self, profile: str) -> tuple[int, Adapted]:
        latest = self.store.latest_model(profile)
        if latest is None:
            raise StoreError(f"profile {profile!r} has no model yet: adapt it first", 409)
        version, path = latest
        key = (profile, version)
        if key not in self._models:
            self._models[key] = load_adapted(path)
        return version, self._models[key]

    def classify(self, profile: str, data: bytes) -> dict:
        version, adapted = self.model(profile)
        wave, rate = decode(data, self.limits)
        with self._classifying:
            x = featurize_waves([resample(wave, rate, self.frontend.sample_rate)],
                                self.frontend)
            (word, probs, score), = adapted.predict(x)
        # confidence: 0.5 at the threshold, odds x9 per spread above (None: no threshold)
        sure = confidence(score, adapted.open_set)
        return {"word": word, "score": score,
                "confidence": None if sure is None else round(sure, 4), "version": version,
                "probabilities": {w: round(p, 4) for w, p in probs.items()}}

    def onnx(self, profile: str) -> Path:
        from metavox.kws.export import export_onnx

        version, adapted = self.model(profile)
        out = Path(tempfile.mkdtemp()) / f"{profile}-v{version}.onnx"
        # one file to download: without the cascade's stage-1 graph (fusion base)
        return export_onnx(adapted, out, cascade=False)

    def spotter(self, profile: str, decision: str = "windows") -> Spotter:
        """The profile's model listening with ``decision`` (see
        :class:`metavox.kws.spotter.SpotSettings`)."""
        settings = SpotSettings(decision=decision)  # a bad decision fails before the load
        _, adapted = self.model(profile)
        return Spotter(adapted, settings=settings)


def readable(values, open_set, words: list[str]) -> dict[str, float] | None:
    """Every word's smoothed score as a confidence (see
    :func:`metavox.pipeline.expect.confidences`), rounded; ``None`` without a threshold."""
    sure = confidences(torch.as_tensor(values), open_set)
    return None if sure is None else {w: round(float(v), 4)
                                      for w, v in zip(words, sure, strict=True)}


def detection_confidence(score: float, open_set) -> dict[str, float]:
    """``{"confidence": c}`` for a detection's score, or ``{}`` without a threshold."""
    sure = confidence(score, open_set)
    return {} if sure is None else {"confidence": round(sure, 4)}


class NewProfile(BaseModel):
    """The body of ``POST /profiles``."""

    name: str


def create_app(service: Service, *, token: str | None = None) -> FastAPI:
    """The FastAPI application over ``service``."""
    app = FastAPI(title="metavox", description=__doc__.split("\n\n")[0])
    # the page and its files hold no secrets: it asks for the token when a request needs it
    open_paths = {"/", "/health", "/docs", "/openapi.json"}
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def authorize(request: Request, call_next):
        path = request.url.path
        if (token is not None and path not in open_paths and not path.startswith("/static/")
                and request.headers.get("authorization") != f"Bearer {token}"):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        return await call_next(request)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, err: StoreError):
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        return JSONResponse({"error": err.detail}, status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"},
                            status_code=422)

    async def read_upload(file: UploadFile) -> bytes:
        data = await file.read(service.limits.max_bytes + 1)
        if len(data) > service.limits.max_bytes:
            raise StoreError(f"upload larger than {service.limits.max_bytes} bytes", 413)
        return data

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict:
        """The run's sample rate (of clips and of the live stream) and the limits."""
        limit = word_limit(service.loaded)
        return {**service.limits.to_dict(), "sample_rate": service.frontend.sample_rate,
                "max_words": min(service.limits.max_words, limit or service.limits.max_words)}

    @app.post("/profiles", status_code=201)
    def create_profile(body: NewProfile) -> dict:
        service.store.create_profile(body.name)
        return {"profile": body.name}

    @app.get("/profiles")
    def list_profiles() -> dict:
        return {"profiles": service.store.profiles()}

    @app.get("/profiles/{profile}")
    def get_profile(profile: str) -> dict:
        return {"profile": profile, "words": service.store.words(profile),
                "model": service.store.model_info(profile)}

    @app.delete("/profiles/{profile}")
    def delete_profile(profile: str) -> dict:
        service.store.delete_profile(profile)
        return {"deleted": profile}

    @app.post("/profiles/{profile}/words/{word}/clips", status_code=201)
    async def upload_clip(profile: str, word: str, file: UploadFile = File(...)) -> dict:
        data = await read_upload(file)
        wave, rate = decode(data, service.limits)
        clip = await run_in_threadpool(
            service.store.add_clip, profile, word, wave, rate,
            max_words=service.limits.max_words, max_clips=service.limits.max_clips)
        return {"id": clip.id, "word": clip.word, "seconds": round(clip.seconds, 3),
                "sample_rate": clip.sample_rate, "sha256": clip.sha256}

    @app.get("/profiles/{profile}/clips")
    def list_clips(profile: str) -> dict:
        return {"clips": [{"id": c.id, "word": c.word, "seconds": round(c.seconds, 3)}
                          for c in service.store.clips(profile)]}

    @app.get("/profiles/{profile}/clips/{clip_id}")
    def get_clip(profile: str, clip_id: int):
        for c in service.store.clips(profile):
            if c.id == clip_id:
                return FileResponse(service.store.clip_path(c), media_type="audio/flac")
        raise StoreError(f"profile {profile!r} has no clip {clip_id}", 404)

    @app.delete("/profiles/{profile}/clips/{clip_id}")
    def delete_clip(profile: str, clip_id: int) -> dict:
        service.store.delete_clip(profile, clip_id)
        return {"deleted": clip_id}

    @app.post("/profiles/{profile}/adapt")
    def adapt(profile: str) -> dict:
        return service.adapt(profile)

    @app.post("/profiles/{profile}/classify")
    async def classify(profile: str, file: UploadFile = File(...)) -> dict:
        data = await read_upload(file)
        return await run_in_threadpool(service.classify, profile, data)

    @app.get("/profiles/{profile}/model.onnx")
    def model_onnx(profile: str):
        path = service.onnx(profile)
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)

    @app.websocket("/profiles/{profile}/listen")
    async def listen(websocket: WebSocket, profile: str) -> None:
        given = websocket.headers.get("authorization") or (
            f"Bearer {websocket.query_params.get('token')}")
        if token is not None and given != f"Bearer {token}":
            await websocket.close(code=1008)
            return
        await websocket.accept()
        decision = websocket.query_params.get("decision", "windows")
        try:
            spotter = await run_in_threadpool(service.spotter, profile, decision)
        except ValueError as err:  # a StoreError, or a bad decision
            await websocket.send_json({"error": str(err)})
            await websocket.close(code=1008)
            return
        words = spotter.adapted.classes
        open_set = spotter.adapted.open_set
        await websocket.send_json({"words": words, "rule": open_set.rule,
                                   "threshold": open_set.to_dict()["threshold"],
                                   "hop": spotter.hop_seconds, "decision": decision,
                                   "sample_rate": service.frontend.sample_rate})
        try:
            while True:
                data = await websocket.receive_bytes()
                chunk = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
                # every hop's scores and decision (on the fusion base a cascade verifies
                # only candidate hops; the others show every word at the floor), or
                # every segment's with decision=segments
                steps = await asyncio.get_running_loop().run_in_executor(
                    service.live_pool, spotter.steps, chunk.astype(np.float32) / 32768)
                for step in steps:
                    t, values, d = step.time, step.values, step.detection
                    shown = levels(step.smoothed, open_set)
                    sure = readable(step.smoothed, open_set, words)
                    await websocket.send_json({
                        "time": round(t, 3),
                        "scores": {w: round(float(v), 3) for w, v in zip(words, values,
                                                                         strict=True)},
                        "levels": {w: round(float(v), 3) for w, v in zip(words, shown,
                                                                         strict=True)},
                        **({"confidence": sure} if sure is not None else {}),
                        **({"detection": {**d.to_dict(), **detection_confidence(
                            d.score, open_set)}} if d is not None else {})})
        except WebSocketDisconnect:
            return

    return app
