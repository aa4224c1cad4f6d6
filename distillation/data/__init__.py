"""Data: datasets by name, hub id or path (``_datasets``), the export format (``_export``), the
authors' released checkpoints (``_official``). Implementation modules; the public names are
re-exported by :mod:`distillation`."""
