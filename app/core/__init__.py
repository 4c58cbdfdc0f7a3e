"""The torch-free core both sides share: the zoo, the store, settings, errors, stimuli, the job queue, uploads,
the verdicts' thresholds, the contracts (constants both sides must agree on) and the ``microscope`` command's root.

`precompute` imports this package and nothing else of `app` (tests/test_layout.py holds it to that); the web server
(`app` outside this package) builds its pages on it.
"""
