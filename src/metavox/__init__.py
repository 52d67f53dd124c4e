"""metavox: few-shot speech recognition by meta-learning.

The engine (``metavox.meta``) runs MAML and its family on any ``nn.Module``; the audio
and data layers turn speech corpora into N-way K-shot episode batches.
"""

__version__ = "0.1.0"
