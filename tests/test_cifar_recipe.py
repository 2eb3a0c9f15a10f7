"""The CIFAR presets on fixtures in the published binary layout: the DAG end to end (prepare, the demo's
recipe with SplitBatchNorm and both losses, the paper's mixtures and Un-Mix, the kNN monitor, kNN, the
probe, the report beside the published numbers), the claims judged over seeds, and the one-GPU plan."""

import json

import pytest
import torch
import yaml

from conftest import REPO, assert_one_line_error, run_flatmix
from test_cifar import _write_binary
from test_workflow import _config_with, snakemake
from flatmix.data import cifar
from flatmix.experiments import Experiments
from flatmix.plan import Plan
from flatmix.workflow_config import load_config

TINY = {"epochs": 2, "batch_size": 16, "bn_splits": 2, "runs": ["asymmetric", "symmetric", "region", "unmix"],
        "pretrain": {"gpus": 1, "nodes": 1, "workers": 0, "knn_every": 1},
        "linear": {"epochs": 2, "lr": None, "milestones": None, "batch_size": 16, "image_size": 32, "workers": 0,
                   "feature_norm": False},
        "knn": {"k": 20, "t": 0.1, "max_images": None, "batch_size": 16, "image_size": 32, "workers": 0}}


def _cifar_config(tmp_path, root, **cifar):
    config = yaml.safe_load(_config_with(tmp_path, preset="cifar10", **{"data.cifar10": str(root)}).read_text())
    config["cifar"] |= cifar
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cifar10_dag_end_to_end(tmp_path):
    """Every stage of preset cifar10 on a fixture of 50 training and 10 test records."""
    root = tmp_path / "cifar-10-batches-bin"
    _write_binary(root, "cifar10", per_file=10, every_class=True)
    config = _cifar_config(tmp_path, root, **TINY)
    result = snakemake("--profile", str(REPO / "workflow" / "profiles" / "local"), "--configfile", str(config),
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / "results" / "cifar10"
    manifest = json.loads((tmp_path / "results" / "data" / "prepared" / "cifar10" / "manifest.json").read_text())
    assert (manifest["classes"], manifest["train_images"], manifest["val_images"]) == (10, 50, 10)
    runs = {row: f"cifar10-moco-{tag}-b16-bn2-e2-k4096" for row, tag in (
        ("asymmetric", "asym"), ("symmetric", "sym"), ("region", "sym-rm1p0.5d1.0"), ("unmix", "sym-unmix"))}
    assert sorted(p.name for p in (results / "pretrain").iterdir()) == sorted(runs.values())
    for row, run in runs.items():
        cfg = torch.load(results / "pretrain" / run / "checkpoint.pth", weights_only=True)["config"]
        assert (cfg["model"]["arch"], cfg["model"]["bn_splits"], cfg["moco"]["aug"]) == ("resnet18cifar", 2, "cifar")
        assert cfg["moco"]["symmetric"] == (row != "asymmetric") and cfg["mixture"]["unmix"] == (row == "unmix")
        assert cfg["train"]["lr"] == pytest.approx(0.06 * 16 / 512) and cfg["train"]["schedule"] == "cosine"
        summary = json.loads((results / "pretrain" / run / "summary.json").read_text())
        assert [h["epoch"] for h in summary["knn"]] == [1, 2] and summary["knn_features"] == "embedding"
        assert summary["knn_top1"] == summary["knn"][-1]["top1"]
        probe = json.loads((results / "linear" / run / "metrics.json").read_text())
        assert (probe["protocol"], probe["lr"], probe["arch"], probe["feature_dim"]) == ("cifar10", 30.0,
                                                                                        "resnet18cifar", 512)
        knn = json.loads((results / "knn" / run / "metrics.json").read_text())
        assert (knn["bank_images"], knn["val_images"], knn["classes"]) == (50, 10, 10)
        assert sorted(p.name for p in (results / "convert" / run).iterdir()) == ["backbone-torchvision.pth"]
    report = results / "report"
    assert (report / "knn.png").is_file() and not (report / "figure4.png").exists()
    markdown = (report / "report.md").read_text()
    assert "## CIFAR-10: MoCo with the MoCo CIFAR demo's recipe, 2 epochs (top-1 %)" in markdown
    assert "- MoCo, asymmetric: 82.6 at 200 epochs (MoCo CIFAR demo)" in markdown
    assert "+ Un-Mix (symmetric): 92.25 at 1000 epochs (Un-Mix README)" in markdown
    assert "| CIFAR-10: the symmetric loss beats the asymmetric one | MoCo CIFAR demo | higher |" in markdown
    assert "Table 1" not in markdown and "Figure 5" not in markdown


def _summary(folder, top1):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"epochs": 200, "knn_top1": top1, "knn": [], "processes": 1,
                                                     "device": "cuda:0", "wall_time_s": 1.0, "final_loss": 1.0}))


def test_cifar_claims_are_judged_over_seeds_beside_the_published_numbers(tmp_path):
    """Three seeds per run at the demo's 200 epochs: each cell is a mean and interval beside the published
    number, and a claim with both cells published (symmetric against asymmetric) has the published
    difference and a verdict."""
    config = _cifar_config(tmp_path, tmp_path / "cifar-10-batches-bin")
    config.write_text(yaml.safe_dump(yaml.safe_load(config.read_text()) | {"experiments": {
        **yaml.safe_load(config.read_text())["experiments"], "seeds": {"cifar10": 3}}}))
    values = {"asym": [82.1, 82.5, 82.9], "sym": [85.0, 85.4, 85.8], "sym-unmix": [84.9, 85.5, 86.1]}
    for tag, tops in values.items():
        for seed, top1 in enumerate(tops):
            _summary(tmp_path / "results" / "cifar10" / "pretrain" / f"cifar10-moco-{tag}-b512-bn8-e200-k4096"
                     f"{f'-s{seed}' if seed else ''}", top1)
    out = tmp_path / "report"
    result = run_flatmix("report", "--config", config, "--results", tmp_path / "results" / "cifar10", "--out", out)
    assert result.returncode == 0, result.stderr
    markdown = (out / "report.md").read_text()
    assert "82.50 ± 0.99 n=3 (82.6, -0.10)" in markdown and "85.40 ± 0.99 n=3 (85.3, +0.10)" in markdown
    rows = {line.split(" | ")[0].lstrip("| "): line for line in markdown.splitlines() if line.startswith("| CIFAR-10")}
    symmetric = rows["CIFAR-10: the symmetric loss beats the asymmetric one"]
    assert "| +2.70 | +2.90 [" in symmetric and "| 3 / 3 | yes | **reproduced** |" in symmetric
    assert "**inconclusive**" in rows["CIFAR-10: Un-Mix improves MoCo (symmetric loss)"]
    assert "**not run**" in rows["CIFAR-10: global mixtures improve MoCo (symmetric loss)"]


def test_cifar100_at_un_mixs_budget_sits_beside_its_readme(tmp_path):
    """At 1000 epochs with the asymmetric loss for the mixture rows, CIFAR-100's cells stand beside Un-Mix's
    README (two decimals), and Un-Mix's claim carries its published difference."""
    config = _cifar_config(tmp_path, tmp_path / "cifar-100-binary", epochs=1000, mixture_loss="asymmetric",
                           runs=["asymmetric", "unmix"])
    text = yaml.safe_load(config.read_text())
    text["preset"], text["data"]["cifar100"] = "cifar100", text["data"].pop("cifar10")
    text["data"]["cifar10"] = None
    config.write_text(yaml.safe_dump(text))
    for tag, top1 in (("asym", 63.0), ("asym-unmix", 66.5)):
        _summary(tmp_path / "results" / "cifar100" / "pretrain" / f"cifar100-moco-{tag}-b512-bn8-e1000-k4096", top1)
    out = tmp_path / "report"
    result = run_flatmix("report", "--config", config, "--results", tmp_path / "results" / "cifar100", "--out", out)
    assert result.returncode == 0, result.stderr
    markdown = (out / "report.md").read_text()
    assert "## CIFAR-100: MoCo with the MoCo CIFAR demo's recipe, 1000 epochs" in markdown
    assert "63.00 n=1 (63.64, -0.64)" in markdown and "66.50 n=1 (67.33, -0.83)" in markdown
    assert "| CIFAR-100: Un-Mix improves MoCo (asymmetric loss) | Un-Mix README | +3.69 | +3.50 |" in markdown


def test_plan_gives_one_gpus_hours_by_the_demos_rates():
    """The symmetric loss costs two asymmetric steps and Un-Mix one more query; the total is said as hours on
    one GPU."""
    plan = Plan(load_config(REPO / "config.yaml"), "cifar100")
    runs = plan.experiments.pretrain_runs()
    hours = {run.split("-moco-")[1].split("-b512")[0]: plan.pretrain_cost(run, spec)[1] for run, spec in runs.items()}
    assert hours["asym"] == pytest.approx(200 * 50_000 / 2480 / 3600)
    assert hours["sym"] == pytest.approx(2 * hours["asym"])
    assert hours["sym-unmix"] == pytest.approx(2.75 * hours["asym"])
    result = run_flatmix("plan", "--preset", "cifar100", "--config", REPO / "config.yaml")
    assert result.returncode == 0 and "on one GPU: about 11.8 hours" in result.stdout, result.stdout
    assert "data.cifar100 null" in result.stderr


def test_an_imagenet_preset_says_a_cifar_root_is_ignored(tmp_path):
    config = load_config(REPO / "config.yaml")
    config["data"] |= {"imagenet": "/data/imagenet", "cifar10": "/data/cifar-10-batches-bin"}
    notes = dict(Experiments(config, "in1k").ignored())
    assert "reads no CIFAR-10 data" in notes["data.cifar10"]
    assert Experiments(config, "cifar10").ignored() == [("data.imagenet", "ignored by preset cifar10, which reads "
                                                                          "no ImageNet data")]


@pytest.mark.parametrize("sets,fragment", [
    (["model.bn_splits=3"], "model.bn_splits 3 does not divide the 16 images"),
    (["method=cmc", "model.bn_splits=2"], "model.bn_splits is defined for MoCo only"),
    (["method=cmc", "train.knn_features=embedding"], "train.knn_features embedding is defined for MoCo only"),
    (["moco.aug=cifar10"], "moco.aug"),
])
def test_bad_cifar_settings_are_refused_in_one_line(tmp_path, sets, fragment):
    _write_binary(tmp_path / "bin", "cifar10", per_file=4, every_class=True)
    cifar.prepare("cifar10", tmp_path / "bin", tmp_path / "prepared")
    args = [a for s in ["data.image_size=32", "model.arch=resnet_tiny", "train.batch_size=16", *sets]
            for a in ("--set", s)]
    result = run_flatmix("pretrain", "--set", f"data.root={tmp_path / 'prepared'}", *args, "--out", tmp_path / "run")
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()
