"""The stages of dvc.yaml, one module each: the data stages ``sample``, ``detect_align``, ``landmarks``,
``masks``, ``pack``, then ``pretrain``, ``finetune``, ``eval_sets``, ``verify`` (``verify@RUN`` and
``verify_reference``) and ``leaderboard``.

Each module's ``run(params, paths)`` (``run(params, paths, name)`` for the stages of one run) is the stage
as the command line, DVC and Prefect run it: the stage's work and its reports under ``paths.metrics`` /
``paths.plots`` (:class:`~facekit.config.PathsParams` names every file). Plain Python (no DVC or Prefect
import); a ``shard_map`` (:mod:`facekit.stages.shard_map`) lets an orchestrator fan the per-shard work of a
data stage out, and :mod:`facekit.stages.launch` relaunches a training stage under torchrun.
"""
