"""Keyword spotting with an adapted model: detections in streams (:mod:`.spotter`), the
stream evaluation protocol (:mod:`.protocol`, :mod:`.report`) and ONNX export
(:mod:`.export`). It sits above :mod:`metavox.pipeline` and below the CLI."""

from metavox.kws.spotter import Detection, Detector, SpotSettings, Spotter, detect

__all__ = ["Detection", "Detector", "SpotSettings", "Spotter", "detect"]
