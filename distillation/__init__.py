"""``distillation``: RCIG dataset distillation (Loo et al., ICML 2023) built on ``bilevel``.

Public names:

* Algorithms (compositions): :func:`vig`, :func:`cig`, :func:`rig`, :func:`rcig`, :func:`frepo`,
  :class:`Algorithm`, :func:`meta_loss`, :class:`SupportSet`, :class:`LearningRates`.
* Pieces: :func:`conv_net`, :class:`ConvNet`, :class:`StandardNetwork`,
  :class:`LinearizedNetwork`, :func:`linearize`, :class:`Partitioned`, :func:`map_batch`,
  :func:`remat_map`, :class:`JointHead`, :class:`ClosedFormHead`,
  :func:`closed_form_head`, :func:`platt_cross_entropy`, :func:`mean_squared_error`,
  :class:`ModelPool`, :class:`LearningRateTuner`, :func:`dsa_augment`.
* The loop: :class:`DistillConfig`, :func:`distill`, :func:`make_step`,
  :func:`make_tune_step`, :func:`init_state`, :func:`init_support`, :func:`random_subset`,
  :func:`make_pool`, :func:`meta_optimizer`.
* Data, evaluation, export: :func:`load_dataset`, :class:`ImageDataset`, :class:`Preprocessor`,
  :class:`EvalConfig`, :func:`evaluate_support`, :func:`save_distilled`, :func:`load_distilled`,
  :func:`import_official` and :func:`read_flax_msgpack` (the authors' released checkpoints).
"""

from distillation.algorithms import (
    Algorithm,
    LearningRates,
    SupportSet,
    cig,
    frepo,
    meta_loss,
    rcig,
    rig,
    vig,
)
from distillation.augment import dsa_augment
from distillation.data import ImageDataset, Preprocessor, load_dataset
from distillation.distill import (
    DistillConfig,
    DistillResult,
    Snapshot,
    distill,
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
    closed_form_head,
    mean_squared_error,
    platt_cross_entropy,
)
from distillation.official import import_official, read_flax_msgpack
from distillation.pool import ModelPool
from distillation.tuning import LearningRateTuner

__all__ = [
    "Algorithm",
    "ClosedFormHead",
    "ConvNet",
    "DistillConfig",
    "DistillResult",
    "DistilledSet",
    "EvalConfig",
    "EvalResult",
    "ImageDataset",
    "JointHead",
    "LearningRateTuner",
    "LearningRates",
    "LinearizedNetwork",
    "ModelPool",
    "Partitioned",
    "Preprocessor",
    "Snapshot",
    "StandardNetwork",
    "SupportSet",
    "cig",
    "closed_form_head",
    "conv_net",
    "distill",
    "dsa_augment",
    "evaluate_support",
    "frepo",
    "import_official",
    "init_state",
    "init_support",
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
    "read_flax_msgpack",
    "random_subset",
    "rcig",
    "remat_map",
    "rig",
    "save_distilled",
    "vig",
]
