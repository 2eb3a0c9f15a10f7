"""The report's statistics against scipy's own t-tests, and every claim's cells against the default config."""

import copy

import numpy as np
import pytest
from scipy import stats as scipy_stats
import yaml

from conftest import REPO
from flatmix.experiments import Experiments
from flatmix.paper import CLAIMS
from flatmix.stats import contrast_interval, mean_interval, verdict
from flatmix.tables import Tables

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def test_a_cells_interval_is_the_t_interval_of_its_mean():
    values = [76.1, 76.9, 75.8, 76.4]
    mean, half = mean_interval(values)
    low, high = scipy_stats.ttest_1samp(values, 0).confidence_interval(0.95)
    assert (mean - half, mean + half) == pytest.approx((low, high))
    assert mean_interval([80.0]) == (80.0, None)


def test_a_two_cell_claim_is_welchs_interval():
    rng = np.random.default_rng(0)
    a, b = list(rng.normal(80, 0.3, 3)), list(rng.normal(79, 0.8, 5))
    estimate, low, high = contrast_interval([(+1, a), (-1, b)])
    welch = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert estimate == pytest.approx(np.mean(a) - np.mean(b)) and (low, high) == pytest.approx(tuple(welch))


def test_a_four_cell_contrast_and_the_edges():
    """(a - b) - (c - d) adds the four variances of the means; one seed on a side gives no interval;
    seeds alike give a zero-width one."""
    cells = [[2.0, 2.2, 2.4], [1.0, 1.1, 1.2], [0.5, 0.5, 0.8], [0.1, 0.3, 0.2]]
    estimate, low, high = contrast_interval(list(zip((1, -1, -1, 1), cells, strict=False)))
    se = np.sqrt(sum(np.var(c, ddof=1) / 3 for c in cells))
    assert estimate == pytest.approx(2.2 - 1.1 - 0.6 + 0.2) and high - low > 2 * 1.96 * se  # t > normal quantile
    assert contrast_interval([(1, [1.0, 2.0]), (-1, [1.0])]) == (0.5, None, None)
    assert contrast_interval([(1, [2.0, 2.0]), (-1, [1.0, 1.0])]) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("sign,low,high,expected", [
    (+1, 0.2, 1.0, "reproduced"), (+1, -1.0, -0.2, "opposite"), (-1, -1.0, -0.2, "reproduced"),
    (+1, -0.2, 1.0, "inconclusive"), (+1, 0.0, 1.0, "inconclusive"), (+1, None, None, "inconclusive")])
def test_verdicts(sign, low, high, expected):
    assert verdict(sign, low, high) == expected


def test_every_claim_names_cells_the_default_config_has():
    """A claim's addresses are looked up by key: a typo would leave it 'not run' for ever."""
    tables = Tables(Experiments(CONFIG, "paper"))
    for claim in CLAIMS:
        for _, address in claim["terms"]:
            if address[0].startswith("figure5"):
                continue
            cell = tables.cell(address)
            assert cell is not None and cell.paper is not None, (claim["id"], address)


def test_seeds_multiply_the_runs_and_name_them():
    config = copy.deepcopy(CONFIG)
    config["experiments"]["seeds"] = {"table5": 3}
    one, three = Experiments(CONFIG, "in100-main"), Experiments(config, "in100-main")
    runs = three.pretrain_runs()
    assert len(runs) == 3 * len(one.pretrain_runs())
    base = three.roles["moco-800"]
    assert [runs[r].get("seed", 0) for r in three.replicas(base)] == [0, 1, 2]
    assert three.replicas(base) == [base, f"{base}-s1", f"{base}-s2"] and runs[base] == one.pretrain_runs()[base]
    # a run Figure 4 shares with Table 5 takes Table 5's seeds; one of Table 1 only keeps 1
    ablation = Experiments(config, "in100-ablation").pretrain_runs()
    assert f"{base}-s2" in ablation and not any(r.endswith("-s1") for r in Experiments(config, "in100-ablation")
                                                 ._named_runs("table1") if r in ablation)


@pytest.mark.parametrize("seeds,fragment", [
    (0, "experiments.seeds: 0"), (101, "experiments.seeds: 101"), ("two", "experiments.seeds: 'two'"),
    ({"table9": 2}, "unknown part 'table9'"), ({"table5": 0}, "experiments.seeds.table5: 0")])
def test_bad_seeds_are_refused_naming_the_key(seeds, fragment):
    from flatmix.errors import FlatmixError
    config = copy.deepcopy(CONFIG)
    config["experiments"]["seeds"] = seeds
    with pytest.raises(FlatmixError, match=fragment.replace("(", r"\(")):
        Experiments(config, "paper")
