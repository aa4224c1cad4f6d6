"""Evaluation: the protocol (``_evaluate``), its augmentations (``_augment``), membership
inference (``_privacy``). Implementation modules; the public names are re-exported by
:mod:`distillation`."""
