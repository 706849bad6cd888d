"""The data stages of dvc.yaml, one module each: ``sample``, ``detect_align``, ``landmarks``, ``masks``, ``pack``.

Each module's ``run(params, paths)`` is the stage as the command line, DVC and Prefect run it: the stage's
work, its report ``<paths.metrics>/<stage>.json`` (plus the rejections list) and, where a person would
rather look, a PNG under ``paths.plots``. Plain Python (no DVC or Prefect import); a ``shard_map``
(:mod:`facekit.stages.shard_map`) lets an orchestrator fan the per-shard work out.
"""
