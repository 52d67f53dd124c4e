"""Export an adapted model to ONNX: the whole thing, waveform in, scores and *unknown* out,
to run without metavox or torch (onnxruntime, numpy).

The graph takes ``waveform [batch, samples]`` (mono, float32 in [-1, 1], at the model's
sample rate, ``samples`` = one clip: the front-end's ``duration``) and gives

- ``values [batch, words]``: every word's open-set score (what a stream smooths; the
  best is compared with the threshold);
- ``probabilities [batch, words]``: softmax over the enrolled words;
- ``scores [batch]``: the open-set score of the best word (its logit or probability, by
  the rule);
- ``word [batch]`` (int64): the best word's index, or ``-1`` for *unknown* (score below
  the calibrated threshold).

The word names, sample rate, clip length, hop, smoothing, refractory period and open-set
settings go into the ONNX
file's metadata (``metadata_props``: ``metavox`` holds them as JSON), so a program needs
nothing else. To spot words in a stream, run it on the last ``duration`` seconds every
hop: what :class:`metavox.kws.spotter.Spotter` computes (see ``examples/spot_onnx.py``).

On the heavy ``fusion`` base the export carries the stream cascade
(:mod:`metavox.kws.cascade`): a second, small file ``NAME.stage1.onnx`` takes the same
``waveform`` and gives ``stage1 [batch, words]``, each word's stage-1 cosine from the
speech embedding alone, and the metadata's ``cascade`` entry names that file and holds
the stage-1 threshold. A program runs stage 1 on every window and the full model
(``NAME.onnx``) only on candidate windows (stage-1 best at or above the threshold) and
the ``smooth - 1`` windows before each; running the full model on every window stays
valid (verifying every hop).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from metavox.audio.features import build_frontend
from metavox.audio.streaming import default_hop
from metavox.kws.cascade import HOP, Stage1, is_heavy, stage1_rule, word_directions
from metavox.kws.spotter import SpotSettings
from metavox.meta.learner import LEARNER_FEATURES
from metavox.meta.openset import RULES, background_logits, rule_values
from metavox.pipeline.enroll import Adapted

OPSET = 18
OUTPUTS = ("values", "probabilities", "scores", "word")


class ExportError(RuntimeError):
    """The model cannot be exported; the message says what to install or change."""


class ClipSpotter(nn.Module):
    """An adapted model as one module: front-end, learner, open-set decision."""

    def __init__(self, adapted: Adapted) -> None:
        super().__init__()
        self.frontend = build_frontend(adapted.frontend).eval()
        self.model = adapted.learner.to_module().eval()
        self.words = len(adapted.classes)
        self.rule = adapted.open_set.rule
        self.features = LEARNER_FEATURES[adapted.learner.kind](self.model)
        t = adapted.open_set.threshold
        self.register_buffer("threshold", torch.tensor(max(t, -3.0e38), dtype=torch.float32))
        bank = adapted.open_set.background if self.rule == "background" else None
        self.register_buffer("bank", torch.zeros(1, 1) if bank is None else bank.float())

    def forward(self, waveform: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.frontend(waveform).unsqueeze(1)
        logits = self.model(x)[:, : self.words]
        if self.rule == "background":
            values = logits - background_logits(self.features(x).flatten(1),
                                                self.bank).unsqueeze(-1)
        else:
            values = rule_values(self.rule, logits)
        score, best = values.max(-1)
        word = torch.where(score >= self.threshold, best, torch.full_like(best, -1))
        return values, logits.softmax(-1), score, word


class Stage1Scorer(nn.Module):
    """The cascade's stage 1 as one module: ``waveform [batch, samples]`` -> ``[batch,
    words]``, each word's cosine between the window's pooled speech embedding and the
    word's speech direction (:func:`metavox.kws.cascade.stage1_values`)."""

    def __init__(self, adapted: Adapted) -> None:
        super().__init__()
        from metavox.kws.cascade import _module_parts

        self.speech = build_frontend(adapted.frontend).speech.eval()
        body, _ = _module_parts(adapted)
        self.pool = getattr(body, "pool", "mean")
        self.register_buffer("directions", word_directions(adapted).float())

    def forward(self, waveform: Tensor) -> Tensor:
        windows = self.speech(waveform).flatten(2)  # [batch, W, 96]
        pooled = windows.amax(1) if self.pool == "max" else windows.mean(1)
        return torch.nn.functional.normalize(pooled, dim=-1) @ self.directions.t()


def export_metadata(adapted: Adapted, hop: float, settings: SpotSettings,
                    stage1: Stage1 | None = None, stage1_file: str | None = None) -> dict:
    """What a program running the exported file needs to know (``stage1``: the cascade's
    rule, whose graph is ``stage1_file`` beside it)."""
    fe = adapted.frontend
    meta = {"format": "metavox-clip-spotter/1", "words": adapted.classes,
            "sample_rate": fe.sample_rate, "clip_samples": fe.num_samples, "hop_seconds": hop,
            "smooth": settings.smooth, "refractory": settings.refractory,
            "segments": asdict(settings.segments),
            "open_set": adapted.open_set.to_dict(), "outputs": list(OUTPUTS),
            "unknown": -1}
    if stage1 is not None:
        meta["cascade"] = {"stage1_file": stage1_file, "output": "stage1",
                           **stage1.to_dict()}
    return meta


def stage1_path(path: str | os.PathLike[str]) -> Path:
    """Where the cascade's stage-1 graph goes beside the exported file ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.stage1.onnx")


def export_onnx(adapted: Adapted, path: str | os.PathLike[str], *, hop: float | None = None,
                settings: SpotSettings | None = None, quantize: bool = False,
                cascade: bool | None = None, cascade_far: float | None = None) -> Path:
    """Write ``adapted`` as an ONNX file (opset 18; see the module doc); ``hop``: seconds
    between windows a stream should use (the front-end's default, as ``metavox listen``)
    and ``settings`` its smoothing and refractory period, both stored for the program that
    runs it; ``quantize``: int8 dynamic quantisation of its weights (onnxruntime's) except
    the spectral front-end's (:func:`spectrum_nodes`), written instead. On the fusion
    base ``cascade`` (``None``: when the model has a stage-1 rule or the bank to calibrate
    one at ``cascade_far``; ``False``: never) also writes the cascade's stage-1 graph
    (:func:`stage1_path`) and names it in the metadata."""
    settings = (settings or SpotSettings()).resolve(adapted.frontend)
    stage1 = None
    if is_heavy(adapted.frontend) and cascade is not False:
        from metavox.kws.cascade import CascadeError

        try:
            stage1 = stage1_rule(adapted, cascade_far)
        except CascadeError:
            if cascade:
                raise
    elif cascade:
        raise ExportError(f"the cascade serves the fusion base, not "
                          f"{adapted.frontend.kind!r}")
    if hop is None:
        hop = (HOP if is_heavy(adapted.frontend) else default_hop(adapted.frontend)
               ) / adapted.frontend.sample_rate
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise ExportError("exporting needs the export extra: pip install 'metavox[export]' "
                          "(onnx, onnxscript, onnxruntime)") from None
    if adapted.open_set.rule not in RULES:
        raise ExportError(f"unknown open-set rule {adapted.open_set.rule!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, adapted.frontend.num_samples)
    stage1_file = None
    if stage1 is not None:
        first = stage1_path(path)
        stage1_file = first.name
        proto1 = _to_onnx(Stage1Scorer(adapted).eval(), example, ["stage1"])
        e = proto1.metadata_props.add()
        e.key, e.value = "metavox", json.dumps(
            {"format": "metavox-cascade-stage1/1", "words": adapted.classes,
             "stage1": stage1.to_dict(), "outputs": ["stage1"]})
        tmp1 = first.with_name(f".{first.name}.tmp")
        onnx.save(proto1, str(tmp1))
        os.replace(tmp1, first)
    meta = export_metadata(adapted, hop, settings, stage1, stage1_file)
    proto = _to_onnx(ClipSpotter(adapted).eval(), example, list(OUTPUTS))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "metavox", json.dumps(meta)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(proto, str(tmp))
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(tmp), str(path), weight_type=QuantType.QInt8,
                         nodes_to_exclude=spectrum_nodes(proto))
        tmp.unlink()
        q = onnx.load(str(path))  # quantize_dynamic keeps no custom metadata: add it back
        if not any(p.key == "metavox" for p in q.metadata_props):
            e = q.metadata_props.add()
            e.key, e.value = "metavox", json.dumps(meta)
            onnx.save(q, str(path))
    else:
        os.replace(tmp, path)
    return path


def _to_onnx(module: nn.Module, example: Tensor, outputs: list[str]):
    """``module`` (waveform in) as an ONNX model proto with a dynamic batch."""
    import logging
    import warnings

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=OPSET, verbose=False,
            input_names=["waveform"], output_names=outputs,
            dynamic_shapes={"waveform": {0: torch.export.Dim("batch")}})
    return program.model_proto


def spectrum_nodes(proto) -> list[str]:
    """The graph's nodes before its first ``Log``: the front-end's STFT and mel filterbank.
    Quantising them is ruinous: dynamic quantisation gives each activation tensor one int8
    scale, and a power spectrum spans ~80 dB, so the quiet bands round to zero before the
    log (measured: the int8 model kept 8 of 54 stream detections). They stay float32."""
    names = []
    for node in proto.graph.node:
        if node.op_type == "Log":
            return names
        names.append(node.name)
    return []


def read_metadata(path: str | os.PathLike[str]) -> dict:
    """The ``metavox`` metadata of an exported file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == "metavox":
            return json.loads(p.value)
    raise ExportError(f"{path} holds no metavox metadata (not made by `metavox export`)")
