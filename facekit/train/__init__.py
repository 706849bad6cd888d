"""The training engine: one loop for every method.

``loop`` (``train``, driven by a :class:`~facekit.config.TrainConfig`), ``schedules`` (per-iteration
arrays), ``checkpoint`` (safetensors weights + resumable state), ``samplers`` (the data order: which samples
a rank sees, per-sample seeds), ``metrics_log`` (``train_log.csv`` and ``metrics.json`` for DVC).
"""
