"""The paper's experiments from config: run names shared between tables, smoke stand-ins, outside
checkpoints, the run specs the DAG passes to `flatmix pretrain`, and the cost plan."""

import copy
import re
import shlex

import pytest
import yaml

from conftest import REPO, assert_one_line_error, run_flatmix
from flatmix.errors import FlatmixError
from flatmix.experiments import Experiments
from flatmix.mixture import Mixer
from flatmix.presets import DEFAULTS
from flatmix.runconfig import resolve, set_flags
from flatmix.tables import Tables

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def test_paper_preset_trains_each_run_once_for_all_tables():
    e = Experiments(CONFIG, "paper")
    runs = e.pretrain_runs()
    assert len(runs) >= 45
    table = lambda key: [c.run for _, cells in Tables(e).tables[key].rows for c in cells if c]  # noqa: E731
    assert [len(table(k)) for k in ("table1", "table2", "table3")] == [6, 6, 11]
    # Table 3 sweeps the decay at Table 2's best count: its decay 1.0 is Table 2's 5 mixes; Table 5's CMC
    # 800-epoch baseline is Table 4's
    assert table("table3")[-1] == table("table2")[3] == "in100-moco-rm5p0.5d1.0-e400-k16384"
    assert table("table4")[0] == table("table5")[6] == "in100-cmc-e800-k16384"
    # Table 6's R50 "ours" is the transfer tables' "Ours (K=65536)"
    assert "in1k-moco-resnet50-gm4p0.5-rm5p0.5d0.2-e200-k65536" in table("table6")
    assert "in1k-moco-resnet50-gm4p0.5-rm5p0.5d0.2-e200-k65536" in table("table8b")
    assert len(e.detections()) == 13  # 3 backbones x 4 settings + random init. on VOC
    assert e.dataset_of("in1k-moco-resnet50w2-e200-k65536") == "imagenet1k"


def test_presets_split_the_paper():
    parts = {p: set(Experiments(CONFIG, p).pretrain_runs()) for p in
             ("in100-ablation", "in100-main", "in1k", "transfer", "paper")}
    assert parts["in100-ablation"] | parts["in100-main"] | parts["in1k"] | parts["transfer"] == parts["paper"]
    assert all(r.startswith("in1k-") for r in parts["in1k"] | parts["transfer"])
    assert not Experiments(CONFIG, "in1k").detections()


def test_every_run_spec_round_trips_through_set_flags():
    for name, spec in Experiments(CONFIG, "paper").pretrain_runs().items():
        flags = shlex.split(set_flags(spec))
        sets = flags[1::2]
        assert flags[::2] == ["--set"] * len(sets)
        cfg = resolve(DEFAULTS, {}, sets=sets)
        assert cfg["train"]["epochs"] == int(re.search(r"-e(\d+)-", name).group(1))
        assert cfg["mixture"]["global"]["mixes"] == spec.get("mixture", {}).get("global", {}).get("mixes", 0)
        assert (cfg["data"]["loader"], cfg["data"]["workers"], cfg["train"]["compile"]) == ("gpu", 8, False)


def test_config_values_change_the_runs():
    config = copy.deepcopy(CONFIG)
    config["experiments"]["table1"] = {"epochs": 100, "global_mixes": [3]}
    config["experiments"]["pretrain"] = {"loader": "pil", "workers": 12, "compile": True, "knn_every": 5,
                                         "knn_max_images": 1000}
    e = Experiments(config, "in100-ablation")
    assert "in100-moco-gm3p0.5-e100-k16384" in e.pretrain_runs()
    spec = e.pretrain_runs()["in100-moco-gm3p0.5-e100-k16384"]
    assert (spec["data"], spec["train"]["compile"]) == ({"loader": "pil", "workers": 12}, True)
    assert (spec["train"]["knn_every"], spec["train"]["knn_max_images"], spec["train"]["knn_k"]) == (5, 1000, 200)
    assert Tables(e).tables["table1"].rows[0][1][0].paper == 76.24  # the paper's 3 mixtures, at any epochs


@pytest.mark.parametrize("table,level", [("table1", "global"), ("table2", "region")])
def test_table_headings_are_the_mixing_steps_each_run_draws(table, level):
    """Tables 1-2's "numbers of mixtures" 2..7 are the authors' num_mix: k mixing steps per sample."""
    e = Experiments(CONFIG, "in100-ablation")
    headings = Tables(e).tables[table].columns
    assert headings == [f"{k} mixes" for k in range(2, 8)]
    for k, cell in zip(range(2, 8), Tables(e).tables[table].rows[0][1]):
        cfg = resolve(DEFAULTS, {}, sets=shlex.split(set_flags(e.runs[cell.run]))[1::2])
        d = Mixer(cfg["mixture"], 0).draw(8, 8, 16, 16)
        drawn = d.global_partners if level == "global" else d.region_partners
        other = d.region_partners if level == "global" else d.global_partners
        assert drawn.shape == (k, 8) and other.shape == (0, 8)


@pytest.mark.parametrize("old,new", [("global_n", "global_mixes"), ("region_n", "region_mixes")])
def test_an_earlier_configs_count_keys_are_refused_naming_the_new_key(tmp_path, old, new):
    config = copy.deepcopy(CONFIG)
    config["experiments"]["table1"] = {"epochs": 400, old: [2, 3]}
    with pytest.raises(FlatmixError, match=f"experiments.table1.{new}"):
        Experiments(config, "paper")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert_one_line_error(run_flatmix("plan", "--config", path), f"experiments.table1.{new}", "mixing steps")


@pytest.mark.parametrize("level", ["global", "region"])
def test_an_earlier_run_specs_count_key_is_refused_naming_the_new_key(tmp_path, level):
    result = run_flatmix("pretrain", "--preset", "smoke-moco", "--set", f"mixture.{level}.n=4", "--out", tmp_path / "o")
    assert_one_line_error(result, f"mixture.{level}.n", f"mixture.{level}.mixes", "mixing steps")
    assert not (tmp_path / "o").exists()


def test_smoke_stands_in_for_the_paper_runs_it_imitates():
    e = Experiments(CONFIG, "smoke")
    assert set(e.pretrain_runs()) == {"smoke-moco", "smoke-moco-mix", "smoke-cmc", "smoke-cmc-mix"}
    moco = Tables(e).tables["table5"].rows[0][1]
    assert moco[1].result.path == "linear/smoke-moco/metrics.json" and moco[1].smoke and moco[1].paper == 78.2
    assert moco[4].result.path == "linear/smoke-moco-mix/metrics.json" and moco[4].paper == 79.8
    assert not moco[0].smoke and moco[0].run == "in100-moco-e240-k16384"  # stays pending
    ours = Tables(e).tables["table8b"].rows[1][1][0]
    assert ours.result.path == "detect/smoke-moco-mix/coco-mask-rcnn-frozen/metrics.json" and ours.smoke


def test_in1k_figure5_is_table6_resnet50_on_imagenet1k():
    """The paper's Figure 5: Table 6's ResNet-50 baseline and ours (the same runs, trained once), measured on
    the prepared ImageNet-1K val."""
    e = Experiments(CONFIG, "in1k")
    assert list(e.flatness) == ["in1k"]
    figure = e.flatness["in1k"]
    table6 = dict(Tables(e).tables["table6"].rows)
    assert figure.runs == {"MoCo": table6["resnet50 MoCo"][0].run, "MoCo + mixtures": table6["resnet50 ours"][0].run}
    assert figure.runs["MoCo + mixtures"] != figure.runs["MoCo"]
    assert figure.dataset == "imagenet1k" and all(e.dataset_of(r) == "imagenet1k" for r in figure.runs.values())
    assert "ImageNet-1K" in figure.title and "not the paper's setting" not in figure.title
    assert e.part_runs("figure5") == set(figure.runs.values()) <= e.part_runs("table6")
    assert set(e.pretrain_runs()) == e.part_runs("table6")  # nothing trained for Figure 5 alone


def test_figure5_per_preset():
    """The paper preset makes both Figure 5s, the paper's first; smoke and in100-main only the ImageNet-100
    one, labelled as not the paper's setting; the other presets none."""
    paper = Experiments(CONFIG, "paper")
    assert list(paper.flatness) == ["in1k", "in100"]
    assert {"figure5", "figure5-in100"} <= set(paper.parts())
    for preset in ("smoke", "in100-main"):
        e = Experiments(CONFIG, preset)
        assert list(e.flatness) == ["in100"], preset
        figure = e.flatness["in100"]
        assert figure.dataset == "imagenet100"
        assert figure.title.startswith("Figure 5 on ImageNet-100 (not the paper's setting")
    assert Experiments(CONFIG, "in100-main").flatness["in100"].runs == {
        "MoCo": paper.roles["moco-800"], "MoCo + mixtures": paper.roles["moco-ours-800"]}
    assert paper.flatness["in100"] == Experiments(CONFIG, "in100-main").flatness["in100"]
    smoke = Experiments(CONFIG, "smoke").flatness["in100"]
    assert smoke.runs == {"MoCo": "smoke-moco", "MoCo + mixtures": "smoke-moco-mix"}
    assert smoke.title.endswith("smoke runs standing in")
    for preset in ("in100-ablation", "transfer"):
        assert not Experiments(CONFIG, preset).flatness


def test_outside_checkpoints_join_the_transfer_tables():
    config = copy.deepcopy(CONFIG)
    config["transfer"]["checkpoints"] = {"supervised-r50": "/ckpt/r50.pth"}
    e = Experiments(config, "transfer")
    assert ("supervised-r50", "coco-retinanet", "frozen") in e.detections()
    assert "supervised-r50" not in e.pretrain_runs()
    for key in ("table7a", "table7b", "table8a", "table8b"):
        assert any(label.startswith("supervised-r50") for label, _ in Tables(e).tables[key].rows)
    config["transfer"]["checkpoints"] = {"in1k-moco-resnet50-e200-k16384": "/x.pth"}
    with pytest.raises(FlatmixError, match="in1k-moco-resnet50-e200-k16384"):
        Experiments(config, "transfer")


def _with_checkpoint(preset, **roots):
    config = copy.deepcopy(CONFIG)
    config["preset"], config["transfer"]["checkpoints"] = preset, {"mine": "/ckpt/r50.pth"}
    config["data"].update(roots)
    return config


def test_benchmark_fine_tunes_the_outside_checkpoints_alone_on_the_data_it_is_given():
    """No pretraining (so no ImageNet), the outside rows only, VOC's two tables where only data.voc is
    set; the paper's other rows in the report as its numbers alone."""
    e = Experiments(_with_checkpoint("benchmark", voc="/data/VOCdevkit"))
    assert e.pretrain_runs() == {} and e.missing_roots() == []
    assert e.detections() == [("mine", "voc-faster-rcnn", "train"), ("mine", "voc-faster-rcnn", "frozen")]
    rows = dict(Tables(e).tables["table7a"].rows)
    assert all(c.paper_only for c in rows["MoCo (K=16384)"]) and not any(c.paper_only for c in rows["mine (outside "
                                                                                                    "checkpoint)"])
    both = Experiments(_with_checkpoint("benchmark", voc="/v", coco="/c"))
    assert {d.task for d in both.detections()} == {"voc-faster-rcnn", "coco-retinanet", "coco-mask-rcnn"}
    assert Experiments(_with_checkpoint("benchmark")).missing_roots() == ["data.voc", "data.coco"]
    with pytest.raises(FlatmixError, match="transfer.checkpoints"):
        Experiments(CONFIG, "benchmark")


def test_smoke_fine_tunes_outside_checkpoints_at_smoke_scale():
    e = Experiments(_with_checkpoint("smoke"))
    assert len(e.detections()) == 8 and sum(d.backbone == "mine" for d in e.detections()) == 4
    [(_, cells)] = [row for row in Tables(e).tables["table8b"].rows if row[0].startswith("mine")]
    assert all(c.smoke for c in cells)  # marked as smoke-scale numbers


@pytest.mark.parametrize("preset,roots,ignored", [
    ("in100-main", {"imagenet": "/i", "voc": "/v"}, ["transfer.checkpoints", "data.voc"]),
    ("benchmark", {"imagenet": "/i", "coco": "/c"}, ["data.imagenet"]),
    ("transfer", {"imagenet": "/i", "voc": "/v", "coco": "/c"}, []),
    ("smoke", {}, []),
])
def test_values_the_preset_ignores_are_named(preset, roots, ignored):
    assert [key for key, _ in Experiments(_with_checkpoint(preset, **roots)).ignored()] == ignored


def test_plan_warns_of_what_the_preset_ignores_in_one_line_each(tmp_path):
    override = tmp_path / "mine.yaml"
    override.write_text("preset: in1k\ntransfer: {checkpoints: {mine: /ckpt/r50.pth}}\n")
    result = run_flatmix("plan", "--config", REPO / "config.yaml", "--config", override)
    assert result.returncode == 0, result.stderr
    assert "flatmix: warning: transfer.checkpoints: ignored by preset in1k, which fine-tunes no detector" in \
        result.stderr.splitlines()[0]


def test_plan_prints_the_cost_per_table_and_the_total():
    result = run_flatmix("plan", "--preset", "paper", "--config", REPO / "config.yaml")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert set(rows) >= {"table1", "table4", "figure4", "table6", "figure5", "figure5-in100", "table8b", "total"}
    assert int(rows["figure5"][1]) == 2 and int(rows["figure5"][2]) == 0  # Table 6's runs, counted there
    runs = len(Experiments(CONFIG, "paper").pretrain_runs())
    assert int(rows["total"][1]) == runs
    assert int(rows["table3"][2]) == 10  # one of Table 3's runs is Table 2's
    total = float(rows["total"][-1].replace(",", ""))
    faster = run_flatmix("plan", "--preset", "paper", "--config", REPO / "config.yaml",
                         "--moco-pairs-per-s", "5266", "--cmc-pairs-per-s", "4192")
    faster_total = float(faster.stdout.splitlines()[-1].split()[-1].replace(",", ""))
    assert faster_total < total
    # each rate with where it was measured, or "given" where a flag set it
    assert "\n  --moco-pairs-per-s 2793  (H200: " in result.stdout
    assert "  --moco-pairs-per-s 5266  (given)" in faster.stdout.splitlines()
    assert "  --probe-images-per-s 12720  (H100: " in faster.stdout
    commands = run_flatmix("plan", "--preset", "paper", "--config", REPO / "config.yaml", "--commands")
    assert len(commands.stdout.splitlines()) == runs


@pytest.mark.parametrize("args,fragments", [
    (["--preset", "everything"], ["everything", "paper"]),
    (["--config", "/nonexistent/config.yaml"], ["/nonexistent/config.yaml"]),
])
def test_plan_refuses_bad_input(args, fragments):
    assert_one_line_error(run_flatmix("plan", *args), *fragments)
