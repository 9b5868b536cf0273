"""pretrain / finetune / evaluate / encode / pictures of a run, as library calls.

Each job checks everything it can before it writes anything, takes the run's
lock before it reads a run it will change (and before a backend starts, so a
second process is refused at once), and leaves the run resumable if it is
stopped at any point. Importing this package imports no backend: the command
line is a thin shell over these functions, and `stackae --help` stays instant.

One concern per module: `data` (the rows a job reads), `common` (opening a
run and its stack, the refusals every job shares), `workers` (a worker's
scratch folder, a strategy's scope), `pretrain`, `finetune`, `evaluate`,
`encode` and `pictures` (the jobs). Every name is used from here, as
`stackae.workflows.NAME`.
"""

from stackae import runs  # noqa: F401  (stackae.workflows.runs, as the command line uses it)
from stackae.workflows.common import (
    as_input,
    check_optimizer,
    load_stack,
    open_run,
    stop_hint,
)
from stackae.workflows.data import (
    DATA_OPTIONS,
    FILE_OPTIONS,
    SPLIT_OPTIONS,
    check_examples,
    check_fingerprint,
    default_source,
    input_shape_of,
    labelled,
    load_data,
    load_rows,
    load_run_data,
    run_scaler,
    targets,
)
from stackae.workflows.encode import encode_job, encode_run
from stackae.workflows.evaluate import evaluate_job, evaluate_run
from stackae.workflows.finetune import (
    MANY_CLASSES,
    _load_arrays,  # noqa: F401  (its refusal of a damaged archive is tested directly)
    check_classes,
    finetune_job,
    finetune_run,
)
from stackae.workflows.pictures import filters_run, reconstruct_run
from stackae.workflows.pretrain import (
    check_pretraining,
    layer_costs,
    layer_sizes,
    new_run,
    pretrain_job,
    pretrain_run,
)
from stackae.workflows.workers import strategy_scope, worker_scratch

__all__ = [
    "DATA_OPTIONS",
    "FILE_OPTIONS",
    "MANY_CLASSES",
    "SPLIT_OPTIONS",
    "as_input",
    "check_classes",
    "check_examples",
    "check_fingerprint",
    "check_optimizer",
    "check_pretraining",
    "default_source",
    "encode_job",
    "encode_run",
    "evaluate_job",
    "evaluate_run",
    "filters_run",
    "finetune_job",
    "finetune_run",
    "input_shape_of",
    "labelled",
    "layer_costs",
    "layer_sizes",
    "load_data",
    "load_rows",
    "load_run_data",
    "load_stack",
    "new_run",
    "open_run",
    "pretrain_job",
    "pretrain_run",
    "reconstruct_run",
    "run_scaler",
    "stop_hint",
    "strategy_scope",
    "targets",
    "worker_scratch",
]
