"""flatmix: a reproduction pipeline for self-supervised pretraining with image mixtures (Shen et al.)."""

__version__ = "0.1.0"
