"""How a pretraining run is started: its shape (GPUs per node, nodes), the launcher that starts one flatmix
process per GPU, its settings as `--set` arguments, the prepared data it reads and the folder it writes.

One home for what the workflow's pretrain rule runs (workflow/rules/common.smk) and what
`flatmix plan --commands` prints, so that the two cannot drift apart.
"""

import shlex

from flatmix import layout
from flatmix.errors import FlatmixError
from flatmix.runconfig import set_args

RENDEZVOUS_PORT = 29400  # torchrun's own default for c10d; docs/pages/cluster.md asks clusters to open it between nodes


def run_shape(experiments, run, spec):
    """(GPUs per node, nodes) of a pretraining run (`spec`, its settings): config
    `experiments.DATASET.gpus/nodes`, or for the smoke and CIFAR runs `smoke.pretrain`, `cifar.pretrain`
    (Experiments.shape_setting). Refused when the processes do not divide the run's global batch, before
    any job is submitted."""
    key, shape = experiments.shape_setting(run)
    gpus, nodes = shape["gpus"], shape["nodes"]
    batch = spec["train"]["batch_size"]
    if batch % (gpus * nodes):
        raise FlatmixError(f"{key}: {gpus} GPUs x {nodes} nodes = {gpus * nodes} processes do not divide "
                           f"{run}'s batch of {batch}")
    return gpus, nodes


def launcher(gpus, nodes=1):
    """`flatmix` (no GPU or one), or flatmix under torchrun with one process per GPU; on several nodes, one
    torchrun per node started by srun, meeting at the node whose shell runs this line (c10d rendezvous on
    port RENDEZVOUS_PORT of its hostname). torchrun as flatmix-torchrun (flatmix.torchrun), which exits 143
    when a stop signal ended the run.

    For several nodes the line must run in the job's own shell (the pretrain rule's SLURM request makes it
    so), not in a step of it, where srun would see only that step's node. srun and torchrun are given the
    counts themselves, as the SLURM executor trims the job's SLURM_* variables. The one shell fragment the
    rules splice unquoted, as its `$SLURM_JOB_ID` and `$(hostname)` are for the job's shell: fixed text and
    two integers (GPUs, nodes; the schema checks both), no path or string from config."""
    gpus, nodes = int(gpus), int(nodes)
    if gpus * nodes <= 1:
        return "flatmix"
    if nodes == 1:
        return f"flatmix-torchrun --standalone --nproc_per_node={gpus} -m flatmix"
    return (f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1"
            f" flatmix-torchrun --nnodes={nodes} --nproc_per_node={gpus} --rdzv_id=$SLURM_JOB_ID --rdzv_backend=c10d"
            f" --rdzv_endpoint=$(hostname):{RENDEZVOUS_PORT} -m flatmix")


def pretrain_settings(spec, data):
    """A run's spec and its data root as `--set key=value` arguments (values in JSON, so that no path reads
    as other YAML), in a list to quote one by one."""
    return set_args({**spec, "data": {**spec.get("data", {}), "root": str(data)}})


def pretrain_command(experiments, run, spec):
    """A run's command line as the pretrain rule runs it (less its log redirect): the launcher unquoted,
    every setting and path shell-quoted."""
    config = experiments.config
    settings = pretrain_settings(spec, layout.prepared_folder(config, experiments.dataset_of(run)))
    out = f"{layout.preset_folder(config, experiments.preset)}/{layout.Pretraining(run).folder}"
    return f"{launcher(*run_shape(experiments, run, spec))} pretrain {shlex.join(settings)} --out {shlex.quote(out)}"
