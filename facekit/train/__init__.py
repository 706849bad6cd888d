"""The training engine: one loop for every method.

``loop`` (``train``, ``TrainConfig``), ``schedules`` (per-iteration arrays), ``checkpoint`` (safetensors
weights + resumable state), ``distributed`` (helpers that also work in one process), ``metrics_log``
(``train_log.csv`` and ``metrics.json`` for DVC).
"""
