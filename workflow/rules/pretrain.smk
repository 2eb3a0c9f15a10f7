# Pretraining: one run per named preset (see `flatmix pretrain --list-presets`), on the prepared
# ImageNet-100. A restarted job resumes from the run's last.pth.


rule pretrain:
    input:
        prepared("imagenet100"),
    output:
        results("pretrain/{run}/checkpoint.pth"),
    params:
        data=lambda wildcards, input: Path(input[0]).parent,
        out=lambda wildcards, output: Path(output[0]).parent,
    log:
        results("logs/pretrain/{run}.log"),
    shell:
        "flatmix pretrain --preset {wildcards.run} --set data.root={params.data} --out {params.out} 2> {log}"
