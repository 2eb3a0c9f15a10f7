"""The CLI as a new user meets it: every --help shows every default, --version, the presets described where
they are chosen, the benchmark's CPU precision and spread, and detectron2's .pkl."""

import argparse
from collections import Counter
import importlib.metadata
import json
import pickle

import pytest
import torch

from conftest import REPO, assert_one_line_error, run_flatmix
from flatmix import experiments, presets
from flatmix.cli import build_parser
from flatmix.models.resnet import build_resnet


def _parsers(parser, path=()):
    """(command path, parser) for the top level and every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


PARSERS = dict(_parsers(build_parser()))


def _options(parser):
    return [a for a in parser._actions
            if not isinstance(a, (argparse._SubParsersAction, argparse._HelpAction, argparse._VersionAction))]


def _has_default(action):
    """A value used when the option is not given (an off flag is not one)."""
    return action.default not in (None, argparse.SUPPRESS) and not (action.nargs == 0 and action.default is False)


@pytest.mark.parametrize("path", PARSERS, ids=lambda path: " ".join(path) or "flatmix")
def test_every_help_describes_every_option_with_its_default(path):
    result = run_flatmix(*path, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines wherever it likes
    options = _options(PARSERS[path])
    assert [a.dest for a in options if not a.help] == []
    expected = Counter(f"(default: {a.default})" for a in options if _has_default(a))
    assert {shown: n for shown, n in expected.items() if text.count(shown) < n} == {}, text


def test_version():
    result = run_flatmix("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"flatmix {importlib.metadata.version('flatmix')}"


def test_plan_help_describes_every_preset():
    lines = run_flatmix("plan", "--help").stdout.splitlines()
    described = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in lines[lines.index("presets:") + 1:]
                 if line.strip()}
    assert described == {name: experiments.PRESET_DESCRIPTIONS[name] for name in experiments.PRESETS}


def test_list_presets_describes_every_smoke_run():
    result = run_flatmix("pretrain", "--list-presets")
    assert result.returncode == 0, result.stderr
    described = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert described == {name: presets.PRESET_DESCRIPTIONS[name] for name in presets.PRESETS}


def _bench(*args):
    result = run_flatmix("bench", "pretrain", "--device", "cpu", "--arch", "resnet_tiny", "--batch-size", "8",
                         "--image-size", "32", "-K", "64", "--workers", "0", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_bench_on_cpu_defaults_to_fp32_and_reports_median_and_spread():
    lines = _bench("--steps", "3", "--warmup", "1")
    assert [(r["stage"], r["mixture"]) for r in lines] == [("train", False), ("train", True), ("mixer", True)]
    for r in lines[:2]:
        assert r["precision"] == "fp32" and (r["steps"], r["warmup"], r["batches_ahead"]) == (3, 1, 0)
        assert 0 <= r["data_wait"] <= 1  # synthetic batches are there at once
        assert 0 < r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"]
        assert 0 <= r["step_s_iqr"] <= r["step_s_max"] - r["step_s_min"]
        assert r["pairs_per_s"] == pytest.approx(8 / r["step_s_median"], rel=1e-3, abs=0.051)  # rounded to 0.1
    mixer = lines[2]
    assert mixer["mixture_spec"] == lines[1]["mixture_spec"] and mixer["mixer_calls"] == 3
    assert 0 < mixer["mixer_s_median"] < lines[1]["step_s_median"] and mixer["copy_s_median"] > 0
    assert mixer["ratio_to_copy"] == pytest.approx(mixer["mixer_s_median"] / mixer["copy_s_median"], rel=0.01)
    assert mixer["step_share"] == pytest.approx(mixer["mixer_s_median"] / lines[1]["step_s_median"], rel=0.01)


def test_bench_mixer_times_the_mixture_of_the_workflow_config_against_a_copy(tmp_path):
    """`bench mixer`: one line, the Mixer on MoCo's two views (CMC's one) at experiments.best.METHOD."""
    override = tmp_path / "global3.yaml"
    override.write_text("experiments:\n  best:\n    moco: {global_mixes: 3}\n")
    for method, views, mixes in (("moco", 2, (3, 5)), ("cmc", 1, (4, 5))):
        result = run_flatmix("bench", "mixer", "--device", "cpu", "--method", method, "--batch-size", "8",
                             "--image-size", "32", "--steps", "3", "--warmup", "1",
                             "--config", REPO / "config.yaml", "--config", override)
        assert result.returncode == 0, result.stderr[-3000:]
        [row] = [json.loads(line) for line in result.stdout.splitlines()]
        spec = row["mixture_spec"]
        assert (row["stage"], row["views"], row["batch_size"], row["precision"]) == ("mixer", views, 8, "fp32")
        assert (spec["global"]["mixes"], spec["region"]["mixes"]) == mixes
        assert row["mixer_s_median"] > 0 and row["copy_s_median"] > 0 and row["ratio_to_copy"] > 0


def test_bench_mixer_refuses_a_batch_too_small_to_mix():
    assert_one_line_error(run_flatmix("bench", "mixer", "--batch-size", "1"), "--batch-size")


def test_bench_explicit_precision_wins_on_cpu():
    assert {r["precision"] for r in _bench("--steps", "1", "--warmup", "0", "--precision", "bf16")} == {"bf16"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A plain torchvision-layout ResNet-50 state dict, one of the formats convert reads."""
    path = tmp_path_factory.mktemp("ckpt") / "r50.pth"
    torch.manual_seed(0)
    torch.save(build_resnet("resnet50").state_dict(), path)
    return path


@pytest.mark.parametrize("name,suffix", [("d2.pth", ".pth"), ("d2", "a name without a suffix")])
def test_detectron2_output_other_than_pkl_is_refused(checkpoint, tmp_path, name, suffix):
    assert_one_line_error(run_flatmix("convert", checkpoint, "--to", "detectron2", "--out", tmp_path / name),
                          "--out", suffix, ".pkl")
    assert list(tmp_path.iterdir()) == []


def test_detectron2_output_is_written_as_pkl(checkpoint, tmp_path):
    result = run_flatmix("convert", checkpoint, "--to", "detectron2", "--out", tmp_path / "d2.pkl")
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "d2.pkl", "rb") as f:
        assert pickle.load(f)["matching_heuristics"] is True


def test_bench_times_the_mixture_of_the_workflow_config(tmp_path):
    """The mixed line times experiments.best.moco at experiments.imagenet100.moco_p, layered like plan's --config."""
    override = tmp_path / "global3.yaml"
    override.write_text("experiments:\n  best:\n    moco: {global_mixes: 3}\n")
    lines = _bench("--steps", "1", "--warmup", "0", "--config", REPO / "config.yaml", "--config", override)
    assert [(r["mixture"], r["mixture_spec"]["global"]["mixes"], r["mixture_spec"]["region"]["mixes"])
            for r in lines] == [(False, 0, 0), (True, 3, 5), (True, 3, 5)]
    assert lines[1]["mixture_spec"]["global"]["p"] == lines[1]["mixture_spec"]["region"]["p"] == 0.5
    assert lines[1]["mixture_spec"]["region"]["decay"] == 0.2


def test_bench_cmc_times_the_cmc_mixture(tmp_path):
    """--method cmc times experiments.best.cmc at experiments.imagenet100.cmc_p, not MoCo's mixture."""
    override = tmp_path / "cmc.yaml"
    override.write_text("experiments:\n  best:\n    cmc: {global_mixes: 2, region_mixes: 3}\n")
    lines = _bench("--method", "cmc", "--steps", "1", "--warmup", "0", "--config", REPO / "config.yaml",
                   "--config", override)
    assert [(r["method"], r["mixture"]) for r in lines] == [("cmc", False), ("cmc", True), ("cmc", True)]
    spec = lines[1]["mixture_spec"]
    assert (spec["global"]["mixes"], spec["region"]["mixes"], spec["global"]["p"]) == (2, 3, 0.1)


def test_bench_without_a_readable_config_says_so_in_one_line(tmp_path):
    """Run outside the project (no config.yaml there) or given a bad file: one line naming it, no timing."""
    result = run_flatmix("bench", "pretrain", "--device", "cpu", "--arch", "resnet_tiny", cwd=tmp_path)
    assert_one_line_error(result, "config.yaml")
    (tmp_path / "bad.yaml").write_text("experiments: [")
    assert_one_line_error(run_flatmix("bench", "pretrain", "--config", tmp_path / "bad.yaml"), "bad.yaml")
