"""The Snakemake DAG: schema validation, lint, and the smoke preset run end to end."""

import json
from pathlib import Path
import re
import subprocess
import sys

import html5lib
import pytest
import torch
import yaml

from conftest import REPO, run_flatmix

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(*args, cwd):
    return subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(cwd), *args],
                          capture_output=True, text=True, cwd=cwd)


def _config_with(tmp_path, **changes):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("key,value,fragments", [
    ("synth.colour", 3, ["colour", "unexpected"]),
    ("synth.seed", "abc", ["seed", "integer"]),
    ("data.imagenet", 5, ["imagenet"]),
    ("preset", "nonsense", ["preset", "nonsense"]),
    # an earlier flatmix's count key (images): refused naming the key that replaced it (mixing steps)
    ("experiments.best.moco", {"global_n": 4, "region_n": 5, "decay": 0.2},
     ["experiments.best.moco.global_mixes", "mixing steps"]),
])
def test_schema_names_the_bad_key(tmp_path, key, value, fragments):
    result = snakemake("-n", "--configfile", str(_config_with(tmp_path, **{key: value})), cwd=tmp_path)
    assert result.returncode != 0
    for fragment in fragments:
        assert fragment in result.stdout + result.stderr, result.stdout + result.stderr


def test_lint_is_clean(tmp_path):
    result = snakemake("--lint", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_real_roots_replace_synthesis(tmp_path):
    config = _config_with(tmp_path, **{"data.imagenet": "/data/imagenet", "data.voc": "/data/VOCdevkit",
                                      "data.coco": "/data/coco"})
    result = snakemake("-n", "-p", "--configfile", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rule synth" not in result.stdout
    for root in ("/data/imagenet", "/data/VOCdevkit", "/data/coco"):
        assert root in result.stdout


def test_paper_preset_plans_every_table(tmp_path):
    """`preset: paper` with real-shaped roots: every pretraining run, a probe and a kNN for each, the
    detections, one report."""
    imagenet, voc, coco = tmp_path / "imagenet", tmp_path / "VOCdevkit", tmp_path / "coco"
    for folder in (imagenet / "train", imagenet / "val", voc / "VOC2007", voc / "VOC2012", coco / "train2017"):
        folder.mkdir(parents=True)
    outside = tmp_path / "supervised.pth"
    outside.write_bytes(b"")
    config = _config_with(tmp_path, **{"preset": "paper", "data.imagenet": str(imagenet), "data.voc": str(voc),
                                      "data.coco": str(coco), "transfer.checkpoints": {"supervised": str(outside)}})
    result = snakemake("-n", "--quiet", "rules", "--configfile", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    counts = _rule_counts(result)
    assert counts["pretrain"] >= 45
    assert counts["linear"] == counts["knn"] == counts["pretrain"]
    assert counts["detect"] >= 12 + 4  # and the outside checkpoint's four
    assert counts["report"] == 1 and counts["prepare_imagenet"] == 2  # ImageNet-100 and ImageNet-1K
    assert "synth" not in counts


def _rule_counts(result):
    return {line.split()[0]: int(line.split()[1]) for line in (result.stdout + result.stderr).splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}


def test_benchmark_preset_fine_tunes_a_checkpoint_with_only_voc(tmp_path):
    """`preset: benchmark` with a checkpoint and a VOC root alone: VOC's two detections and the report, no
    pretraining, no ImageNet; a value it ignores (data.imagenet) is said in one line."""
    voc = tmp_path / "VOCdevkit"
    (voc / "VOC2007").mkdir(parents=True)
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"")
    config = _config_with(tmp_path, **{"preset": "benchmark", "data.voc": str(voc), "data.imagenet": "/ignored",
                                      "transfer.checkpoints": {"mine": str(mine)}})
    result = snakemake("-n", "--quiet", "rules", "--configfile", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    counts = _rule_counts(result)
    assert counts["detect"] == 2 and counts["report"] == 1 and counts["prepare_detection"] == 1, counts
    assert not {"pretrain", "prepare_imagenet", "synth", "linear", "knn"} & set(counts), counts
    assert "flatmix: warning: data.imagenet: ignored by preset benchmark, which reads no ImageNet data" in (\
        result.stdout + result.stderr).splitlines()


def test_smoke_preset_fine_tunes_an_outside_checkpoint_too(tmp_path):
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"")
    config = _config_with(tmp_path, **{"transfer.checkpoints": {"mine": str(mine)}})
    result = snakemake("-n", "--quiet", "rules", "--configfile", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _rule_counts(result)["detect"] == 4 + 4  # the smoke run's four settings, and the checkpoint's


def test_multi_gpu_jobs_start_under_torchrun(tmp_path):
    """Several GPUs: torchrun in the job, one process per GPU; several nodes: one torchrun per node by srun."""
    config = _config_with(tmp_path, **{"preset": "in1k", "experiments.imagenet1k.nodes": 2,
                                      "data.imagenet": str(tmp_path / "imagenet"),  # not read by a dry run
                                      "slurm.resources.paper.linear": {"gpu": 4}})
    result = snakemake("-n", "-p", "--configfile", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if line.startswith("Shell command:")]
    pretrain = [c for c in commands if " pretrain " in c]
    assert len(pretrain) == 4 and all(
        "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 " in c
        and "flatmix-torchrun --nnodes=2 --nproc_per_node=8 " in c
        and "--rdzv_endpoint=$(hostname):29400 -m flatmix pretrain " in c for c in pretrain)
    assert all("flatmix-torchrun --standalone --nproc_per_node=4 -m flatmix linear" in c for c in commands if " linear " in c)
    assert all(c.split()[2] == "flatmix" for c in commands if " convert " in c)


def test_the_smoke_runs_take_their_shape_from_config(tmp_path):
    """smoke.pretrain (one process by default, no loader workers) shapes the smoke runs, to try a cluster's
    multi-GPU or multi-node launch, or its pre-emption with loader workers, in minutes."""
    config = _config_with(tmp_path, **{"smoke.pretrain": {"gpus": 2, "nodes": 2, "workers": 3}})
    result = snakemake("-n", "-p", "--configfile", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pretrain = [line for line in result.stdout.splitlines()
                if line.startswith("Shell command:") and " pretrain " in line]
    assert len(pretrain) == 4 and all("srun --nodes=2 " in c and " --nproc_per_node=2 " in c for c in pretrain)
    assert all(" --set data.workers=3 " in c for c in pretrain)
    # the SLURM request: both GPUs on each of 2 nodes, one task per node, the rule's own srun (`mpi`)
    requests = [line for line in result.stdout.splitlines() if "gres=gpu:" in line]
    assert len(requests) == 4 and all(
        "gres=gpu:2, nodes=2, mpi=srun, tasks=2, tasks_per_gpu=0, cpus_per_gpu=1" in r for r in requests)


def test_no_job_echoes_the_config(tmp_path):
    """The report's copy of the config is written by Snakemake itself (a local rule with no command), so
    no printed command carries its kilobytes; the longest line left is a pretraining command's --sets."""
    result = snakemake("-n", "-p", "--configfile", str(_config_with(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert "rule workflow_config:" in lines and max(map(len, lines)) < 1500
    assert not any('"experiments"' in line for line in lines)


@pytest.mark.parametrize("changes,fragment", [
    ({"smoke.pretrain.gpus": 3},
     "smoke.pretrain: 3 GPUs x 1 nodes = 3 processes do not divide smoke-moco's batch of 16"),
    ({"preset": "in1k", "data.imagenet": "/data/imagenet", "experiments.imagenet1k.gpus": 6},
     "experiments.imagenet1k: 6 GPUs x 1 nodes = 6 processes do not divide in1k-moco-resnet50"),
])
def test_processes_that_do_not_divide_a_batch_are_refused_before_any_job(tmp_path, changes, fragment):
    result = snakemake("-n", "--configfile", str(_config_with(tmp_path, **changes)), cwd=tmp_path)
    error = [line for line in result.stderr.splitlines() if line.startswith("flatmix: error:")]
    assert result.returncode != 0 and len(error) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert fragment in error[0]
    plan = run_flatmix("plan", "--commands", "--config", _config_with(tmp_path, **changes))
    assert plan.returncode != 0 and plan.stderr.startswith("flatmix: error: ") and fragment in plan.stderr


def test_a_multi_node_run_inside_the_image_is_refused(tmp_path):
    """Under --sdm apptainer the rule's srun would run inside the image, which has no SLURM client."""
    config = _config_with(tmp_path, **{"smoke.pretrain.nodes": 2})
    result = snakemake("-n", "--sdm", "apptainer", "--configfile", str(config), cwd=tmp_path)
    error = [line for line in result.stderr.splitlines() if line.startswith("flatmix: error:")]
    assert result.returncode != 0 and len(error) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "smoke-cmc runs on 2 nodes" in error[0] and "slurm profile" in error[0]


@pytest.mark.parametrize("preset,roots,missing", [
    ("in100-ablation", {}, "data.imagenet is null"),
    ("in100-main", {"voc": "/data/VOCdevkit", "coco": "/data/coco"}, "data.imagenet is null"),
    ("in1k", {}, "data.imagenet is null"),
    ("transfer", {"imagenet": "/data/imagenet"}, "data.voc, data.coco are null"),
    ("transfer", {"imagenet": "/data/imagenet", "voc": "/data/VOCdevkit"}, "data.coco is null"),
    # outside checkpoints need no ImageNet, but transfer's own backbones are ImageNet-1K runs
    ("transfer", {"voc": "/data/VOCdevkit", "coco": "/data/coco", "outside": "/ckpt/r50.pth"}, "data.imagenet is null"),
    ("paper", {"imagenet": "/data/imagenet", "coco": "/data/coco"}, "data.voc is null"),
    ("cifar10", {"imagenet": "/data/imagenet", "cifar100": "/data/cifar-100-binary"}, "data.cifar10 is null"),
    ("cifar100", {}, "data.cifar100 is null"),
])
def test_a_paper_preset_refuses_a_null_data_root(tmp_path, preset, roots, missing):
    """A null root makes the synthetic set: a paper-scale preset is refused before any job, naming the key
    and how to set it."""
    changes = {f"data.{k}": v for k, v in roots.items() if k != "outside"}
    if "outside" in roots:
        changes["transfer.checkpoints"] = {"supervised": roots["outside"]}
    result = snakemake("-n", "--configfile", str(_config_with(tmp_path, preset=preset, **changes)), cwd=tmp_path)
    assert result.returncode != 0
    error = [line for line in result.stderr.splitlines() if line.startswith("flatmix: error:")]
    assert len(error) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"preset {preset} runs on real data only, but {missing}" in error[0] and "--configfile" in error[0]


def test_plan_notes_the_null_roots_a_preset_needs():
    """`flatmix plan` is a cost estimate, useful before the data is in place: it notes the missing roots
    on stderr and still prints the plan."""
    in1k = run_flatmix("plan", "--preset", "in1k", "--config", REPO / "config.yaml")
    assert in1k.returncode == 0 and "total" in in1k.stdout, in1k.stderr
    assert in1k.stderr.startswith("flatmix: note: data.imagenet null: the workflow refuses preset in1k")
    smoke = run_flatmix("plan", "--preset", "smoke", "--config", REPO / "config.yaml")
    assert smoke.returncode == 0 and smoke.stderr == ""


def _dry_run_outputs(tmp_path, config):
    result = snakemake("-n", "--configfile", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    return {path for line in result.stdout.splitlines() if line.strip().startswith(("output:", "log:"))
            for path in line.split(":", 1)[1].strip().split(", ")}


def test_presets_never_share_an_output(tmp_path):
    """The smoke preset and a paper preset in one results folder: no output or log of one is the other's,
    each preset's under results/PRESET/, the data under results/data/."""
    roots = {"data.imagenet": "/data/imagenet", "data.voc": "/data/VOCdevkit", "data.coco": "/data/coco"}
    smoke = _dry_run_outputs(tmp_path, _config_with(tmp_path))
    in_real = _dry_run_outputs(tmp_path, _config_with(tmp_path, **roots))  # the smoke preset on real data
    paper = _dry_run_outputs(tmp_path, _config_with(tmp_path, preset="paper", **roots))
    assert smoke and paper and not smoke & paper
    assert in_real & paper == {f"results/data/prepared/{d}/manifest.json" for d in ("imagenet100", "voc", "coco")} \
        | {f"results/data/logs/prepared/{d}.log" for d in ("imagenet100", "voc", "coco")}  # the same data, shared
    for preset, outputs in (("smoke", smoke), ("paper", paper)):
        assert all(p.startswith((f"results/{preset}/", "results/data/")) for p in outputs), outputs
    assert "results/smoke/report/report.html" in smoke and "results/paper/report/report.html" in paper


@pytest.mark.slow
def test_smoke_dag_end_to_end(tmp_path):
    """Every stage, with results in a folder whose name holds a space and a quote (config paths reach the
    rules' commands quoted)."""
    root = tmp_path / "smoke results 'q'"
    results, data = root / "smoke", root / "data"  # the preset's own folder; the data every preset shares
    config = str(_config_with(tmp_path, results=root.name))
    profile = str(REPO / "workflow" / "profiles" / "local")
    result = snakemake("--profile", profile, "--configfile", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # a run a person can follow: the report's place said after the last step, no GPU claimed by the local
    # jobs (they print their resources), the long rules' logs in lines rather than a bar's carriage returns
    lines = result.stderr.splitlines()
    said = lines.index(f"flatmix: the report is {(results / 'report' / 'report.html').resolve()}")
    assert said > max(i for i, line in enumerate(lines) if "steps (100%) done" in line)
    assert "resources: " in result.stderr and not re.search(r"gres=|\bgpu=", result.stdout + result.stderr)
    for pattern, progress in (("pretrain/*.log", 3), ("linear/*.log", 4), ("flatness/*.log", 2), ("detect/*/*.log", 2)):
        logs = list((results / "logs").glob(pattern))
        assert logs, pattern
        for log in logs:
            text = log.read_text()
            assert "\r" not in text and len(text.splitlines()) >= 3, log
            assert sum(" eta " in line for line in text.splitlines()) >= progress, text  # progress lines
    prepared = data / "synth-prepared"  # made from the synthetic set, never taken for the real data
    assert json.loads((prepared / "imagenet100" / "manifest.json").read_text())["classes"] == 100
    assert json.loads((prepared / "voc" / "manifest.json").read_text())["splits"]["VOC2007/test"]["images"] > 0
    assert json.loads((prepared / "coco" / "manifest.json").read_text())["splits"]["val2017"]["images"] > 0
    assert all((data / "logs" / f"{r}.log").is_file()
               for r in ("synth", "synth-prepared/imagenet100", "synth-prepared/voc", "synth-prepared/coco"))
    for run in ("smoke-moco", "smoke-moco-mix", "smoke-cmc", "smoke-cmc-mix"):
        checkpoint = torch.load(results / "pretrain" / run / "checkpoint.pth", weights_only=True)
        assert checkpoint["method"] == run.split("-")[1]
        assert (checkpoint["config"]["mixture"]["global"]["mixes"] > 0) == run.endswith("-mix")
        metrics = json.loads((results / "linear" / run / "metrics.json").read_text())
        assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
        # the smoke probe learns: its loss falls and its top-1 is far above chance (not that the 2-epoch
        # pretraining helped: a random ResNet-50 scores higher on the synthetic classes, README)
        losses = [h["loss"] for h in metrics["history"]]
        assert not metrics["diverged"] and losses[-1] < losses[0], metrics["history"]
        assert metrics["top1"] >= 5 * 100 / metrics["classes"], metrics["top1"]
        knn = json.loads((results / "knn" / run / "metrics.json").read_text())
        assert 0 <= knn["top1"] <= knn["top5"] <= 100 and knn["k"] == 200 and "git_commit" in knn["provenance"]
        monitor = [json.loads(line) for line in (results / "pretrain" / run / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in monitor if "knn_top1" in m] == [0, 1]  # after each of the 2 epochs
    assert (results / "convert" / "smoke-moco" / "backbone-mmdet.pth").is_file()
    assert (results / "convert" / "smoke-cmc" / "l-torchvision.pth").is_file()
    assert [p.name for p in (results / "flatness").iterdir()] == ["in100"]  # not the paper's ImageNet-1K one
    flatness = json.loads((results / "flatness" / "in100" / "flatness.json").read_text())
    assert set(flatness["models"]) == {"MoCo", "MoCo + mixtures"}
    assert flatness["title"].startswith("Figure 5 on ImageNet-100 (not the paper's setting")
    assert Path(flatness["data"]).parts[-3:] == ("data", "synth-prepared", "imagenet100")
    detect = results / "detect" / "smoke-moco-mix"
    for setting, keys in (("voc-faster-rcnn-train", ["AP50", "recall"]), ("voc-faster-rcnn-frozen", ["AP50", "recall"]),
                          ("coco-retinanet-frozen", ["bbox_AP", "bbox_AP50", "bbox_AP75"]),
                          ("coco-mask-rcnn-frozen", ["bbox_AP", "mask_AP", "mask_AP50", "mask_AP75"])):
        metrics = json.loads((detect / setting / "metrics.json").read_text())
        assert all(0 <= metrics[k] <= 100 for k in keys), metrics
    again = snakemake("--profile", profile, "--configfile", config, "-n", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr

    # the report: the paper's numbers beside the smoke results, both figures, valid HTML5
    report = results / "report"
    markdown = (report / "report.md").read_text()
    for number in ("79.8", "80.0", "76.8", "60.8", "76.4", "33.7"):
        assert f"({number}" in markdown, number
    assert "Smoke preset" in markdown and " smoke](#prov-linear-smoke-moco)" in markdown
    assert "### ImageNet-100\n" in markdown and f"![{flatness['title']}](figure5-in100.png)" in markdown
    for png in (report / "figure4.png", report / "curves.png", report / "figure5-in100.png",
                results / "flatness" / "in100" / "flatness.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (report / "report.html").read_text()
    html5lib.HTMLParser(strict=True).parse(html)
    assert html.count('src="data:image/png;base64,') == 3  # Figures 4 and 5, the training curves
    # Snakemake's own report, with the figures and tables as report items
    own = snakemake("--report", str(tmp_path / "snakemake-report.html"), "--configfile", config, cwd=tmp_path)
    assert own.returncode == 0, own.stderr[-2000:]
    own_html = (tmp_path / "snakemake-report.html").read_text()
    assert "figure4.png" in own_html and "Figure 5 on ImageNet-100" in own_html  # the caption takes the title

    # two seeds: seed 0's results stay made (the same names and settings); the DAG adds each run's seed 1,
    # 8 pretraining runs with 8 kNN evaluations in all, and the report shows intervals and claim verdicts
    (tmp_path / "seeded").mkdir()
    seeded = str(_config_with(tmp_path / "seeded", results=root.name, **{"experiments.seeds": 2}))
    plan = snakemake("-n", "--quiet", "rules", "--configfile", seeded, cwd=tmp_path)
    counts = _rule_counts(plan)
    assert counts["pretrain"] == counts["linear"] == counts["knn"] == counts["detect"] == 4, counts
    runs = [f"{run}-s1" for run in ("smoke-moco", "smoke-moco-mix", "smoke-cmc", "smoke-cmc-mix")]
    targets = [f"{root.name}/smoke/{kind}/{run}/metrics.json" for run in runs for kind in ("linear", "knn")]
    made = snakemake(*targets, "--profile", profile, "--configfile", seeded, cwd=tmp_path)  # --configfile takes 1+
    assert made.returncode == 0, made.stderr[-3000:]
    assert sorted(p.name for p in (results / "knn").iterdir()) == sorted(runs + [r[:-3] for r in runs])
    for run in runs:
        spec = yaml.safe_load((results / "pretrain" / run / "config.yaml").read_text())
        monitor = [json.loads(line) for line in (results / "pretrain" / run / "metrics.jsonl").read_text().splitlines()]
        assert spec["seed"] == 1 and [m["epoch"] for m in monitor if "knn_top1" in m] == [0, 1]
        assert list((results / "pretrain" / run / "tensorboard").glob("events.out.tfevents.*"))
    report = run_flatmix("report", "--config", seeded, "--results", results, "--out", tmp_path / "seeded-report")
    assert report.returncode == 0, report.stderr[-3000:]
    markdown = (tmp_path / "seeded-report" / "report.md").read_text()
    assert re.search(r"\[\d+\.\d\d ± \d+\.\d\d n=2 \(79\.8\) smoke\]", markdown)  # Table 5's MoCo +G+R
    claims = markdown.split("## Claims")[1].split("\n## ")[0]
    assert "exercises the machinery, it is not evidence" in claims
    judged = [line for line in claims.splitlines() if "| 2 / 2 |" in line]  # the smoke runs' MoCo, CMC G+R claims
    assert len(judged) == 2 and all(re.search(r"\*\*(reproduced|opposite|inconclusive)\*\*", row) for row in judged)
