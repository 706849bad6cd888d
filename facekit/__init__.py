"""facekit: self-supervised face pre-training, fine-tuning and evaluation with one data lineage."""

__version__ = "0.1.0"
