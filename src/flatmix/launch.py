"""How a pretraining run is started: its shape (GPUs per node, nodes), the launcher that starts one flatmix
process per GPU, its settings as `--set` arguments, the prepared data it reads and the folder it writes.

One home for what the workflow's pretrain rule runs (workflow/rules/common.smk) and what
`flatmix plan --commands` prints, so that the two cannot drift apart.
"""

import shlex

from flatmix import layout
from flatmix.runconfig import set_args


def run_shape(experiments, run):
    """(GPUs per node, nodes) of a pretraining run: from config per data set; smoke runs take one GPU."""
    if experiments.smoke:
        return 1, 1
    c = experiments.config["experiments"][experiments.dataset_of(run)]
    return c["gpus"], c["nodes"]


def launcher(gpus, nodes=1):
    """`flatmix` (no GPU or one), or flatmix under torchrun with one process per GPU; on several nodes, one
    torchrun per node started by srun, meeting at the job's first node.

    The one shell fragment the rules splice unquoted, as its `$SLURM_*` and `$(scontrol ...)` are for the
    job's shell: fixed text and two integers (GPUs, nodes; the schema checks both), no path or string
    from config."""
    gpus, nodes = int(gpus), int(nodes)
    if gpus * nodes <= 1:
        return "flatmix"
    if nodes == 1:
        return f"torchrun --standalone --nproc_per_node={gpus} -m flatmix"
    return ("srun --ntasks-per-node=1 --kill-on-bad-exit=1 torchrun --nnodes=$SLURM_JOB_NUM_NODES"
            f" --nproc_per_node={gpus} --rdzv_id=$SLURM_JOB_ID --rdzv_backend=c10d"
            ' --rdzv_endpoint=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):29400 -m flatmix')


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
    return f"{launcher(*run_shape(experiments, run))} pretrain {shlex.join(settings)} --out {shlex.quote(out)}"
