"""Readers of the downstream datasets (expression, attributes, alignment, parsing, pose) in their published layouts.

Each reader turns a dataset root, laid out as the dataset publishes it, into :class:`DownstreamItem` s. Every file
under the root is either read or rejected with a reason (:class:`Rejected`), so ``len(items)`` and the rejections
reconcile with what the root holds; a malformed annotation file raises one ``ValueError`` naming the file and line.

:data:`READERS` maps a dataset name to its :class:`DatasetReader` (task, class names or landmark count, ``read``).
"""

from __future__ import annotations

from facekit.data.downstream.alignment import ALIGNMENT_READERS
from facekit.data.downstream.attributes import ATTRIBUTE_READERS
from facekit.data.downstream.expression import EXPRESSION_READERS
from facekit.data.downstream.items import SPLITS, TASKS, DatasetReader, DatasetScan, DownstreamItem, Rejected
from facekit.data.downstream.parsing import PARSING_READERS
from facekit.data.downstream.pose import POSE_READERS

#: dataset name -> reader.
READERS: dict[str, DatasetReader] = {
    reader.name: reader
    for reader in (
        *EXPRESSION_READERS,
        *ATTRIBUTE_READERS,
        *ALIGNMENT_READERS,
        *PARSING_READERS,
        *POSE_READERS,
    )
}

__all__ = ["READERS", "SPLITS", "TASKS", "DatasetReader", "DatasetScan", "DownstreamItem", "Rejected"]
