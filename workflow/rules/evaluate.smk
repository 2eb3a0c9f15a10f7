# Evaluation: backbone conversion, the linear probe and kNN on each pretraining run, and Figure 5 (one per
# EXPERIMENTS.flatness key: the paper's on ImageNet-1K, the ImageNet-100 one of smoke and in100-main).


rule convert:
    input:
        lambda wildcards: backbone_checkpoint(wildcards.run),
    output:
        results("convert/{run}/{part}-{target}"),
    wildcard_constraints:
        run=one_of([*PRETRAIN_RUNS, *OUTSIDE]),
        part="backbone|l|ab",
        target=r"torchvision\.pth|mmdet\.pth|detectron2\.pkl",
    params:
        to=lambda wildcards: wildcards.target.split(".")[0],
        view=lambda wildcards: [] if wildcards.part == "backbone" else ["--view", wildcards.part],
    resources:
        **job_resources("convert"),
    log:
        results("logs/convert/{run}/{part}-{target}.log"),
    shell:
        "flatmix convert {input:q} --to {params.to:q} {params.view:q} --out {output:q} > {log:q} 2>&1"


rule linear:
    input:
        checkpoint=lambda wildcards: pretrained(wildcards.run),
        data=lambda wildcards: prepared(EXPERIMENTS.dataset_of(wildcards.run)),
    output:
        results(Probe("{run}").path),
    wildcard_constraints:
        run=one_of(PRETRAIN_RUNS),
    params:
        data=lambda wildcards, input: Path(input.data).parent,
        out=lambda wildcards, output: Path(output[0]).parent,
        options=lambda wildcards: linear_options(wildcards.run),
        launcher=launcher(rule_gpus("linear")),
    resources:
        **job_resources("linear"),
    log:
        results(Probe("{run}").log),
    shell:
        "{params.launcher} linear --backbone {input.checkpoint:q} --data {params.data:q} --out {params.out:q}"
        " {params.options:q} 2> {log:q}"


rule knn:
    input:
        checkpoint=lambda wildcards: pretrained(wildcards.run),
        data=lambda wildcards: prepared(EXPERIMENTS.dataset_of(wildcards.run)),
    output:
        results(Knn("{run}").path),
    wildcard_constraints:
        run=one_of(PRETRAIN_RUNS),
    params:
        data=lambda wildcards, input: Path(input.data).parent,
        out=lambda wildcards, output: Path(output[0]).parent,
        options=knn_options(),
        launcher=launcher(rule_gpus("knn")),
    resources:
        **job_resources("knn"),
    log:
        results(Knn("{run}").log),
    shell:
        "{params.launcher} knn --backbone {input.checkpoint:q} --data {params.data:q} --out {params.out:q}"
        " {params.options:q} 2> {log:q}"


rule flatness:
    input:
        checkpoints=lambda wildcards: [pretrained(run) for run in EXPERIMENTS.flatness[wildcards.figure].runs.values()],
        data=lambda wildcards: prepared(EXPERIMENTS.flatness[wildcards.figure].dataset),
    output:
        png=report(results(Flatness("{figure}").png), caption="../report/figure5.rst", category="Figures"),
        json=results(Flatness("{figure}").path),
    wildcard_constraints:
        figure=one_of(EXPERIMENTS.flatness),
    params:
        backbones=lambda wildcards: flatness_backbones(wildcards.figure),
        title=lambda wildcards: EXPERIMENTS.flatness[wildcards.figure].title,
        data=lambda wildcards, input: Path(input.data).parent,
        out=lambda wildcards, output: Path(output.png).parent,
        settings=EXPERIMENTS.settings("flatness"),
    resources:
        **job_resources("flatness"),
    log:
        results(Flatness("{figure}").log),
    shell:
        "flatmix flatness {params.backbones:q} --data {params.data:q} --out {params.out:q}"
        " --image-size {params.settings[image_size]:q} --workers {params.settings[workers]:q}"
        " --title {params.title:q} 2> {log:q}"
