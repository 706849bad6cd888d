"""Publishing to the Hugging Face Hub.

- :mod:`facekit.hub.datasets`: packed shards → Parquet dataset folder (embedded images), read back, push.
- :mod:`facekit.hub.cards`: the dataset card (README.md): sources, parameters, DVC lineage, counts.
- :mod:`facekit.hub.models`: a trained run's backbone → model folder (weights, config, card), push, ``from_pretrained``.
- :mod:`facekit.hub.tokens`: token lookup and Hub calls that never leak the token (errors, logs).

Nothing here is imported by the package itself; ``datasets`` is only loaded by :mod:`facekit.hub.datasets`.
"""
