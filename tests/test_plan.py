"""`flatmix plan`: its commands are the pretraining commands the DAG runs (launcher, settings, data and
output folder, quoting), and its probe cost counts every image the probe reads."""

import json
import shlex

import pytest

from conftest import REPO, run_flatmix
from flatmix import paper
from flatmix.experiments import PRESET_PARTS, Experiments
from flatmix.workflow_config import load_config
from flatmix.launch import launcher
from flatmix.plan import Plan
from flatmix.runconfig import flatten
from test_workflow import _config_with, snakemake

RESULTS = "my results/it's here"  # a space and a quote: each path must stay one argument


def _dag_pretrain_commands(tmp_path, config):
    """The pretrain rule's commands in `snakemake -n -p`, less their log redirect."""
    result = snakemake("-n", "-p", "--configfile", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    return {line.removeprefix("Shell command: ").rsplit(" 2> ", 1)[0] for line in result.stdout.splitlines()
            if line.startswith("Shell command: ") and " pretrain --set " in line}


def _expected_launcher(config, preset, dataset):
    """The launcher's start and the GPUs it starts, from config `experiments.DATASET.gpus/nodes`."""
    if preset == "smoke":
        return "flatmix pretrain ", None
    shape = config["experiments"][dataset]
    if shape["nodes"] > 1:
        return f"srun --nodes={shape['nodes']} --ntasks={shape['nodes']} ", f"--nproc_per_node={shape['gpus']} "
    return f"flatmix-torchrun --standalone --nproc_per_node={shape['gpus']} -m flatmix pretrain ", None


@pytest.mark.parametrize("preset", ["smoke", "paper"])
def test_plan_commands_are_the_pretraining_commands_the_dag_runs(tmp_path, preset):
    """One line per run: the launcher of its GPUs and nodes (ImageNet-1K on two nodes: srun), its spec and
    prepared data as --set, the folder the DAG writes as --out, paths whole under shlex.split, and the
    parts that need it; the very commands `snakemake -n -p` plans."""
    roots = {} if preset == "smoke" else {"data.imagenet": str(tmp_path / "image net"),
                                         "data.voc": str(tmp_path / "VOCdevkit"), "data.coco": str(tmp_path / "coco")}
    path = _config_with(tmp_path, preset=preset, results=RESULTS, **{"experiments.imagenet1k.nodes": 2}, **roots)
    result = run_flatmix("plan", "--config", path, "--commands")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    config = load_config(path)
    e = Experiments(config)
    runs = e.pretrain_runs()
    lines = result.stdout.splitlines()
    assert len(lines) == len(runs)
    by_out = {shlex.split(line, comments=True)[-1]: line for line in lines}
    assert len(by_out) == len(runs)
    parts = e.parts() or PRESET_PARTS["paper"]  # the smoke runs: the parts of the runs they stand in for
    for run, spec in runs.items():
        dataset = e.dataset_of(run)
        line = by_out.pop(f"{RESULTS}/{preset}/pretrain/{run}")
        start, gpus = _expected_launcher(config, preset, dataset)
        assert line.startswith(start) and (gpus is None or gpus in line), line
        args = shlex.split(line, comments=True)
        pretrain = args.index("pretrain")
        *sets, out_flag, out = args[pretrain + 1:]
        assert sets[0::2] == ["--set"] * (len(sets) // 2) and out_flag == "--out"
        values = {k: json.loads(v) for k, v in (s.split("=", 1) for s in sets[1::2])}
        assert values.pop("data.root") == f"{RESULTS}/data/{'prepared' if roots else 'synth-prepared'}/{dataset}"
        assert values == flatten(spec)
        named = line.rsplit("  # ", 1)[1].removeprefix("stands in for ").split(" (")[0].split(", ")
        assert named == [p for p in parts if run in e.part_runs(p)] and named, line
    assert any(line.startswith("srun ") for line in lines) == (preset == "paper")
    assert {line.rsplit("  # ", 1)[0] for line in lines} == _dag_pretrain_commands(tmp_path, path)


def test_a_results_folder_spelled_with_a_trailing_slash_names_the_same_folders(tmp_path):
    """`results: out/` and `results: out` are one folder to the plan and to the DAG (flatmix.layout)."""
    path = _config_with(tmp_path, results="out/")
    lines = run_flatmix("plan", "--config", path, "--commands").stdout.splitlines()
    commands = {line.rsplit("  # ", 1)[0] for line in lines}
    assert len(commands) == 4 and all(" --out out/smoke/pretrain/smoke-" in c and "//" not in c for c in commands)
    assert commands == _dag_pretrain_commands(tmp_path, path)


def _probe_gpu_s(preset, **linear):
    """Seconds of one ResNet-50 ImageNet-100 probe at 1 image/s, with config `linear` (or `smoke.linear`)
    changed."""
    config = load_config(REPO / "config.yaml")
    (config["smoke"]["linear"] if preset == "smoke" else config["linear"]).update(linear)
    plan = Plan(config, preset, {"probe_images_per_s": 1.0})
    run, spec = next((r, s) for r, s in plan.experiments.pretrain_runs().items()
                     if plan.experiments.dataset_of(r) == "imagenet100" and s["model"]["arch"] == "resnet50")
    return plan.probe_cost(run, spec) * 3600


def test_probe_cost_counts_validation_after_every_epoch():
    """flatmix.linear validates after every epoch: a probe reads epochs x (train + val) images, at the
    epochs of config `linear` (null: the protocol's 60), or of `smoke.linear` for the smoke preset."""
    images = paper.IMAGENET100_TRAIN + paper.IMAGENET100_VAL
    assert _probe_gpu_s("paper", epochs=3) == pytest.approx(3 * images)
    assert _probe_gpu_s("paper", epochs=None) == pytest.approx(60 * images)
    smoke_images = 100 * (8 + 4)  # config.yaml's synth: 8 train and 4 val images per class
    assert _probe_gpu_s("smoke", epochs=5) == pytest.approx(5 * smoke_images)
    assert _probe_gpu_s("smoke", epochs=None) == pytest.approx(60 * smoke_images)


def test_launcher_is_fixed_text_and_two_integers():
    """The launcher is spliced into the rule's shell unquoted: anything but integers is refused."""
    assert launcher(1) == launcher(0) == "flatmix"
    assert launcher(4) == "flatmix-torchrun --standalone --nproc_per_node=4 -m flatmix"
    assert launcher(8, 2) == ("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --kill-on-bad-exit=1 "
                              "flatmix-torchrun --nnodes=2 --nproc_per_node=8 --rdzv_id=$SLURM_JOB_ID --rdzv_backend=c10d "
                              "--rdzv_endpoint=$(hostname):29400 -m flatmix")
    with pytest.raises(ValueError):
        launcher("4; touch PWNED")


def test_a_plan_at_3_seeds_costs_3_times_the_pretraining_and_probing_and_says_so(tmp_path):
    """Every seed is a run of its own: 3 seeds triple the runs, the pretraining, the probing and kNN, and
    the detections of the seeded backbones (random initialisation is fine-tuned once); the plan prints
    the seeds it assumed."""
    config = load_config(REPO / "config.yaml")
    one = Plan(config, "paper").rows()[-1]
    config["experiments"]["seeds"] = 3
    plan = Plan(config, "paper")
    three = plan.rows()[-1]
    for key in ("runs", "pretrain_images", "pretrain_gpu_h", "probe_gpu_h", "knn_gpu_h"):
        assert three[key] == pytest.approx(3 * one[key]), key
    assert three["detections"] == 3 * (one["detections"] - 1) + 1
    assert "seeds per run (experiments.seeds): 3;" in plan.text()
    (tmp_path / "seeds.yaml").write_text("experiments: {seeds: {table5: 3, table6: 2}}\n")
    result = run_flatmix("plan", "--preset", "paper", "--config", REPO / "config.yaml",
                         "--config", tmp_path / "seeds.yaml")
    assert result.returncode == 0
    assert "seeds per run (experiments.seeds): table5 3, table6 2, the rest 1;" in result.stdout
