"""CI: the exported model and examples/spot_onnx.py in a virtual environment without torch.

    python .ci/standalone_example.py DIR            # writes DIR/words.onnx, DIR/stream.wav
    python .ci/standalone_example.py DIR --check OUT.jsonl
                                      # the example's detections name the placed words
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_kws import RATE, SETTINGS, make_adapted, synthetic_stream  # noqa: E402


def main() -> None:
    folder = Path(sys.argv[1])
    wave, placed = synthetic_stream()
    if "--check" in sys.argv:
        got = [json.loads(line)["word"] for line in Path(sys.argv[3]).read_text().splitlines()]
        want = [w for w, _, _ in placed]
        print(f"standalone example detected {got}; placed {want}")
        sys.exit(0 if got == want else 1)
    import soundfile as sf

    from metavox.kws.export import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(make_adapted(), folder / "words.onnx", settings=SETTINGS)
    sf.write(folder / "stream.wav", wave, RATE, subtype="FLOAT")


if __name__ == "__main__":
    main()
