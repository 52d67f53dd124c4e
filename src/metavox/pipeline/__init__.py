"""The pipeline: from a run config to trained models, evaluations, enrolled words and
reports.

- :mod:`~metavox.pipeline.config`: the typed, strict run config;
- :mod:`~metavox.pipeline.build`: corpus, split, features, samplers, backbone and
  algorithm from a config (the composition root);
- :mod:`~metavox.pipeline.train`: meta-training a config with the engine, and loading a run;
- :mod:`~metavox.pipeline.baselines`: pre-training, fine-tuning and the other baselines;
- :mod:`~metavox.pipeline.evaluate`: a run and its baselines on the same test episodes;
- :mod:`~metavox.pipeline.enroll`: adapting a run to a user's words, saving and loading it;
- :mod:`~metavox.pipeline.report`: Markdown, JSON and plots;
- :mod:`~metavox.pipeline.demo`: the main job on the built-in synthetic corpus.

Nothing below this package imports it.
"""
