"""``distillation``: RCIG dataset distillation (Loo et al., ICML 2023) built on ``bilevel``.

Public names:

* Algorithms (compositions): :func:`vig`, :func:`cig`, :func:`rig`, :func:`rcig`,
  :func:`rcig_paper_text`, :func:`frepo`,
  :class:`Algorithm`, :func:`meta_loss`, :class:`SupportSet`, :class:`LearningRates`.
* Pieces: :func:`conv_net`, :class:`ConvNet`, :class:`StandardNetwork`,
  :class:`LinearizedNetwork`, :func:`linearize`, :class:`Partitioned`, :func:`map_batch`,
  :func:`remat_map`, :class:`JointHead`, :class:`ClosedFormHead`,
  :class:`KRRHead`, :func:`closed_form_head`, :func:`label_margin`,
  :func:`platt_cross_entropy`, :func:`mean_squared_error`, :func:`clip_to_direct`,
  :class:`ModelPool`, :class:`LearningRateTuner`, :func:`classify_trace`,
  :func:`released_preround`, :func:`released_schedule`, :func:`dsa_augment`,
  :func:`released_augment`.
* The loop: :class:`DistillConfig`, :func:`distill`, :func:`make_step`,
  :func:`make_tune_step`, :func:`init_state`, :func:`init_support`, :func:`random_subset`,
  :func:`make_pool`, :func:`meta_optimizer`, :func:`ema_support`, :func:`epoch_batch`.
* Data, evaluation, export: :func:`load_dataset`, :class:`ImageDataset`, :class:`Preprocessor`,
  :class:`EvalConfig`, :func:`evaluate_support`, :func:`save_distilled`, :func:`load_distilled`,
  :func:`import_official` and :func:`read_flax_msgpack` (the authors' released checkpoints).
"""

from distillation.algorithms import (
    Algorithm,
    LearningRates,
    SupportSet,
    cig,
    clip_to_direct,
    frepo,
    meta_loss,
    rcig,
    rcig_paper_text,
    rig,
    vig,
)
from distillation.augment import dsa_augment, released_augment
from distillation.data import ImageDataset, Preprocessor, load_dataset
from distillation.distill import (
    DistillConfig,
    DistillResult,
    Snapshot,
    distill,
    ema_support,
    epoch_batch,
    init_state,
    init_support,
    make_pool,
    make_step,
    make_tune_step,
    meta_optimizer,
    random_subset,
)
from distillation.evaluate import EvalConfig, EvalResult, evaluate_support
from distillation.export import DistilledSet, load_distilled, save_distilled
from distillation.models import ConvNet, conv_net
from distillation.networks import (
    LinearizedNetwork,
    Partitioned,
    StandardNetwork,
    linearize,
    map_batch,
    remat_map,
)
from distillation.objectives import (
    ClosedFormHead,
    JointHead,
    KRRHead,
    closed_form_head,
    label_margin,
    mean_squared_error,
    platt_cross_entropy,
)
from distillation.official import import_official, read_flax_msgpack
from distillation.pool import ModelPool
from distillation.tuning import (
    LearningRateTuner,
    classify_trace,
    released_preround,
    released_schedule,
)

__all__ = [
    "Algorithm",
    "ClosedFormHead",
    "ConvNet",
    "DistillConfig",
    "DistilledSet",
    "DistillResult",
    "EvalConfig",
    "EvalResult",
    "ImageDataset",
    "JointHead",
    "KRRHead",
    "LearningRates",
    "LearningRateTuner",
    "LinearizedNetwork",
    "ModelPool",
    "Partitioned",
    "Preprocessor",
    "Snapshot",
    "StandardNetwork",
    "SupportSet",
    "cig",
    "classify_trace",
    "clip_to_direct",
    "closed_form_head",
    "conv_net",
    "distill",
    "dsa_augment",
    "ema_support",
    "epoch_batch",
    "evaluate_support",
    "frepo",
    "import_official",
    "init_state",
    "init_support",
    "label_margin",
    "linearize",
    "load_dataset",
    "load_distilled",
    "make_pool",
    "make_step",
    "make_tune_step",
    "map_batch",
    "mean_squared_error",
    "meta_loss",
    "meta_optimizer",
    "platt_cross_entropy",
    "random_subset",
    "rcig",
    "rcig_paper_text",
    "read_flax_msgpack",
    "released_augment",
    "released_preround",
    "released_schedule",
    "remat_map",
    "rig",
    "save_distilled",
    "vig",
]
