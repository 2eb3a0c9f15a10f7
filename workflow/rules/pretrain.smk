# Pretraining: one run per name of the preset (flatmix.experiments builds each from config), on the
# prepared ImageNet-100 or ImageNet-1K. Several GPUs: torchrun in the job (srun + torchrun on several
# nodes). A requeued or restarted job resumes from the run's last.pth.


rule pretrain:
    input:
        lambda wildcards: prepared(EXPERIMENTS.dataset_of(wildcards.run)),
    output:
        pretrained("{run}"),
    params:
        launcher=lambda wildcards: launcher(*run_shape(wildcards.run)),
        settings=lambda wildcards, input: pretrain_settings(wildcards.run, Path(input[0]).parent),
        out=lambda wildcards, output: Path(output[0]).parent,
    wildcard_constraints:
        run=one_of(PRETRAIN_RUNS),
    resources:
        **pretrain_resources(),
    log:
        results(Pretraining("{run}").log),
    shell:
        "{params.launcher} pretrain {params.settings:q} --out {params.out:q} 2> {log:q}"
