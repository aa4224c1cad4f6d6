"""``distillation``: RCIG dataset distillation (Loo et al., ICML 2023) built on ``bilevel``.

Public names (``docs/architecture.md`` shows how they fit together):

* Algorithms — compositions of five pieces: :class:`Algorithm` (network, final layer, inner
  solver, hypergradient, outer loss); the factories :func:`vig`, :func:`cig`, :func:`rig`,
  :func:`rcig`, :func:`rcig_paper_text`, :func:`frepo`, :func:`random_subset` (one keyword
  signature), :func:`compose`; the pieces' builders :func:`inner_solver`,
  :func:`implicit_adam`; :class:`InnerProblem`, :class:`InnerRate`, :class:`SupportSet`,
  :func:`meta_loss`, :func:`clip_to_direct`.
* Pieces: :func:`conv_net`, :class:`ConvNet`, :class:`StandardNetwork`,
  :class:`LinearizedNetwork`, :func:`linearize`, :class:`Partitioned`, :func:`map_batch`,
  :func:`remat_map`, :class:`JointHead`, :class:`ClosedFormHead`, :class:`KRRHead`,
  :func:`closed_form_head`, :func:`ridge_dual`, :func:`label_margin`,
  :func:`platt_cross_entropy`, :func:`mean_squared_error`, :class:`ModelPool`,
  :class:`LearningRateTuner`, :func:`classify_trace`, :func:`released_preround`,
  :func:`released_schedule`, :func:`dsa_augment`, :func:`released_augment`.
* Evaluation networks (the cross-architecture study): :func:`build_network` (ConvNet,
  ResNet-18, VGG-11, AlexNet; none/instance/batch norm; released or DC definitions),
  :class:`Network`, :func:`parameter_count`.
* The step: :class:`DistillConfig`, :class:`Distiller` (``init`` / ``next_batch`` / ``step``),
  :class:`DistillState`, :func:`init_support`, :func:`meta_optimizer`, :func:`ema_support`,
  :func:`epoch_batch`, :func:`data_parallel_mesh`, :func:`shard_state`.
* The run: :func:`run` with the callbacks :class:`Callback`, :class:`ProgressBar`,
  :class:`History`, :class:`Checkpointer`, :class:`Snapshots`, :class:`SignalStop`;
  :func:`distill` (a whole run from arrays) returning :class:`DistillResult`;
  :class:`Interrupted`, :class:`RunFailed`, :class:`InterruptGuard`;
  :func:`reuse_host_memory` (XLA:CPU's per-step buffers kept in the heap; ``rcig`` calls it).
* Data, evaluation, export: :func:`load_dataset`, :func:`stream_dataset` (uint8 on disk until
  a batch is drawn) and its :class:`HostImages`, :class:`ImageDataset`, :class:`Preprocessor`,
  :class:`EvalConfig`, :func:`evaluate_support`, :func:`save_distilled`, :func:`load_distilled`,
  :func:`import_official` and :func:`read_flax_msgpack` (the authors' released checkpoints);
  membership inference: :func:`privacy_evaluation`, :func:`run_attacks`, :class:`PrivacyRow`;
  DD-Ranking's scores: :func:`dd_ranking`, :func:`label_robust_score`,
  :func:`augmentation_robust_score`, :class:`RankingResult`.
"""

# First, before anything runs on JAX: importing it makes XLA:CPU use its own convolution kernels
# (1.3-2.2x faster here than YNNPACK's; see the module). RCIG_KEEP_XLA_FLAGS=1 keeps the defaults.
import distillation._xla_cpu  # noqa: F401  # isort: skip
from distillation._algorithms import (
    Algorithm,
    InnerRate,
    SupportSet,
    cig,
    clip_to_direct,
    compose,
    frepo,
    implicit_adam,
    inner_solver,
    meta_loss,
    random_subset,
    rcig,
    rcig_paper_text,
    rig,
    vig,
)
from distillation._architectures import Network, build_network, parameter_count
from distillation._checkpoint import RunFailed
from distillation._distill import (
    DistillConfig,
    Distiller,
    DistillResult,
    DistillState,
    Snapshot,
    data_parallel_mesh,
    distill,
    ema_support,
    epoch_batch,
    init_support,
    meta_optimizer,
    shard_state,
)
from distillation._host_memory import reuse_host_memory
from distillation._interrupts import InterruptGuard
from distillation._loop import (
    Callback,
    Checkpointer,
    History,
    Interrupted,
    ProgressBar,
    SignalStop,
    Snapshots,
    run,
)
from distillation._models import ConvNet, conv_net
from distillation._networks import (
    LinearizedNetwork,
    Partitioned,
    StandardNetwork,
    linearize,
    map_batch,
    remat_map,
)
from distillation._objectives import (
    ClosedFormHead,
    InnerProblem,
    JointHead,
    KRRHead,
    closed_form_head,
    label_margin,
    mean_squared_error,
    platt_cross_entropy,
    ridge_dual,
)
from distillation._pool import ModelPool
from distillation._tuning import (
    LearningRateTuner,
    classify_trace,
    released_preround,
    released_schedule,
)
from distillation.data._datasets import HostImages, ImageDataset, Preprocessor, load_dataset
from distillation.data._export import DistilledSet, load_distilled, save_distilled
from distillation.data._official import import_official, read_flax_msgpack
from distillation.data._stream import stream_dataset
from distillation.evaluation._augment import dsa_augment, released_augment
from distillation.evaluation._evaluate import EvalConfig, EvalResult, evaluate_support
from distillation.evaluation._privacy import PrivacyRow, privacy_evaluation, run_attacks
from distillation.evaluation._ranking import (
    RankingResult,
    augmentation_robust_score,
    dd_ranking,
    label_robust_score,
)

__all__ = [
    "Algorithm",
    "Callback",
    "Checkpointer",
    "ClosedFormHead",
    "ConvNet",
    "DistillConfig",
    "DistillResult",
    "DistillState",
    "DistilledSet",
    "Distiller",
    "EvalConfig",
    "EvalResult",
    "History",
    "HostImages",
    "ImageDataset",
    "InnerProblem",
    "InnerRate",
    "InterruptGuard",
    "Interrupted",
    "JointHead",
    "KRRHead",
    "LearningRateTuner",
    "LinearizedNetwork",
    "ModelPool",
    "Network",
    "Partitioned",
    "Preprocessor",
    "PrivacyRow",
    "ProgressBar",
    "RankingResult",
    "RunFailed",
    "SignalStop",
    "Snapshot",
    "Snapshots",
    "StandardNetwork",
    "SupportSet",
    "augmentation_robust_score",
    "cig",
    "classify_trace",
    "clip_to_direct",
    "build_network",
    "closed_form_head",
    "compose",
    "conv_net",
    "data_parallel_mesh",
    "dd_ranking",
    "distill",
    "dsa_augment",
    "ema_support",
    "epoch_batch",
    "evaluate_support",
    "frepo",
    "implicit_adam",
    "import_official",
    "init_support",
    "inner_solver",
    "label_margin",
    "label_robust_score",
    "linearize",
    "load_dataset",
    "load_distilled",
    "map_batch",
    "mean_squared_error",
    "meta_loss",
    "meta_optimizer",
    "parameter_count",
    "platt_cross_entropy",
    "privacy_evaluation",
    "random_subset",
    "rcig",
    "rcig_paper_text",
    "read_flax_msgpack",
    "reuse_host_memory",
    "released_augment",
    "released_preround",
    "released_schedule",
    "remat_map",
    "ridge_dual",
    "run_attacks",
    "rig",
    "run",
    "save_distilled",
    "shard_state",
    "stream_dataset",
    "vig",
]
