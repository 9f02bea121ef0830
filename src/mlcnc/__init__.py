"""mlcnc: long-tailed multi-label image classification with neural collapse (MLC-NC)."""

__version__ = "0.1.0"
