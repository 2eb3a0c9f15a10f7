"""The report's shape: every table with made, pending and missing cells, valid self-contained HTML5,
links that lead to provenance, and one-line errors. (The smoke DAG test checks it on real results.)"""

import json
import re

import html5lib
import yaml

from conftest import REPO, assert_one_line_error, run_flatmix
from flatmix.experiments import Experiments, linear_result

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_report_sets_ours_beside_the_paper_and_links_provenance(tmp_path):
    config = dict(CONFIG, preset="in100-main")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    results = tmp_path / "results"
    run = Experiments(config).roles["moco-ours-800"]  # Table 5's MoCo +Global +Region, 800 epochs
    _write(results / "linear" / run / "metrics.json",
           {"top1": 80.25, "top5": 95.0, "epochs": 60, "wall_time_s": 12.5,
            "provenance": {"git_commit": "abc123", "container_image": "flatmix.sif",
                           "hardware": {"gpus": ["NVIDIA H100"]}, "packages": {"torch": "2.14.1"}}})
    (results / "pretrain" / run).mkdir(parents=True)
    (results / "pretrain" / run / "config.yaml").write_text("method: moco\ntrain:\n  epochs: 800\n")
    _write(results / "pretrain" / run / "summary.json",
           {"epochs": 800, "final_loss": 6.5, "processes": 4, "device": "cuda:0", "wall_time_s": 86400.0,
            "provenance": {"git_commit": "abc123", "container_image": "flatmix.sif", "hardware": {}}})

    result = run_flatmix("report", "--config", tmp_path / "config.yaml", "--results", results,
                         "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "report" / "report.md").read_text()
    html = (tmp_path / "report" / "report.html").read_text()
    for table in range(1, 9):
        assert f"## Table {table}" in markdown
    assert "80.25 (79.8, +0.45)" in markdown  # ours (paper, delta)
    assert "pending (78.2)" in markdown and "pending (80.0)" in markdown  # not made: shown, not dropped
    assert "pending (76.16)" in markdown  # Table 1 keeps the paper's two decimals
    assert "abc123" in markdown and "flatmix.sif" in markdown and "86400.0" in markdown

    html5lib.HTMLParser(strict=True).parse(html)  # raises on any HTML5 parse error
    assert html.count('src="data:image/png;base64,') == 1  # Figure 4 embedded (Figure 5 pending here)
    assert "### Figure 5 on ImageNet-100 (not the paper's setting" in markdown  # in100-main's Figure 5 only
    assert "ImageNet-1K val" not in markdown
    assert not re.search(r'(src|href)="(?!#|data:)', html), "the HTML must not load anything from outside"
    links = set(re.findall(r'href="#([^"]+)"', html))
    assert links and all(f'id="{a}"' in html for a in links)
    assert (tmp_path / "report" / "figure4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_shows_each_figure5_with_its_title(tmp_path):
    """The paper preset makes two Figure 5s: the made one (ImageNet-1K) embedded with its title and maxima,
    the ImageNet-100 one, labelled as not the paper's setting, pending."""
    from PIL import Image

    config = dict(CONFIG, preset="paper")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    figures = Experiments(config).flatness
    results = tmp_path / "results"
    _write(results / "flatness" / "in1k" / "flatness.json",
           {"title": figures["in1k"].title, "models": {"MoCo": {"max_probability": 0.012345},
                                                       "MoCo + mixtures": {"max_probability": 0.006789}}})
    Image.new("RGB", (8, 8)).save(results / "flatness" / "in1k" / "flatness.png")

    result = run_flatmix("report", "--config", tmp_path / "config.yaml", "--results", results,
                         "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "report" / "report.md").read_text()
    html = (tmp_path / "report" / "report.html").read_text()
    in1k, in100 = figures["in1k"].title, figures["in100"].title
    assert "ImageNet-1K" in in1k and "not the paper's setting" in in100
    made = markdown.index(f"### {in1k}\n")
    pending = markdown.index(f"### {in100}\n")
    assert made < pending < markdown.index("## Provenance")
    assert "](../flatness/in1k/flatness.png)" in markdown[made:pending]
    assert "MoCo: mean maximum probability 0.012345" in markdown[made:pending]
    assert "MoCo + mixtures: mean maximum probability 0.006789" in markdown[made:pending]
    assert markdown[pending:].split("\n\n")[1] == "pending"
    html5lib.HTMLParser(strict=True).parse(html)
    assert html.count('src="data:image/png;base64,') == 2  # Figure 4 and the made Figure 5
    assert 'id="figure5-in1k"' in html and 'id="figure5-in100"' in html
    assert re.search(r"<h3 id=\"figure5-in100\">Figure 5 on ImageNet-100 \(not the paper(&#39;|')s setting", html)
    assert "0.006789" in html


def test_report_reads_and_writes_the_configs_preset_folder_by_default(tmp_path):
    """Without --results and --out, the report is the one the DAG makes: RESULTS/PRESET and its report/,
    not another preset's outputs in the same results folder."""
    config = dict(CONFIG, preset="in1k", results="out")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run, other = list(Experiments(config).pretrain_runs())[:2]
    _write(tmp_path / "out" / "in1k" / "linear" / run / "metrics.json", {"top1": 61.5, "top5": 90.0})
    for made in (run, other):  # the paper preset's results, beside
        _write(tmp_path / "out" / "paper" / "linear" / made / "metrics.json", {"top1": 99.0, "top5": 99.5})
    result = run_flatmix("report", "--config", "config.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["report"] == "out/in1k/report/report.html"
    assert json.loads(result.stdout)["cells_made"] == 1
    markdown = (tmp_path / "out" / "in1k" / "report" / "report.md").read_text()
    assert "61.5" in markdown and "99.0" not in markdown


def test_report_refuses_bad_input(tmp_path):
    assert_one_line_error(run_flatmix("report", "--config", tmp_path / "missing.yaml"), "missing.yaml")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(dict(CONFIG, preset="everything")))
    assert_one_line_error(run_flatmix("report", "--config", tmp_path / "config.yaml", "--results", tmp_path,
                                      "--out", tmp_path / "r"), "everything")
    assert not (tmp_path / "r" / "report.html").exists()


def test_smoke_report_says_its_numbers_are_not_comparable_and_shows_no_delta(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(dict(CONFIG, preset="smoke")))
    results = tmp_path / "results"
    _write(results / linear_result("smoke-moco"), {"top1": 12.34, "top5": 30.0, "diverged": False})
    _write(results / linear_result("smoke-moco-mix"), {"top1": None, "top5": None, "diverged": True})

    result = run_flatmix("report", "--config", tmp_path / "config.yaml", "--results", results,
                         "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "report" / "report.md").read_text()
    html = (tmp_path / "report" / "report.html").read_text()
    statement = "these numbers only show that the pipeline runs"
    assert markdown.index(statement) < markdown.index("## Table 1") and statement in html
    assert "not comparable with the paper's" in markdown
    assert re.search(r"\[12\.34 \([\d.]+\) smoke\]", markdown)  # ours and the paper's, no difference
    assert "[diverged (79.8) smoke]" in markdown
    assert not re.search(r"\(\d+\.\d+, [+-]\d", markdown)  # no cell carries a delta


def test_report_shows_a_diverged_probe_as_diverged(tmp_path):
    config = dict(CONFIG, preset="in100-main")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    results = tmp_path / "results"
    run = Experiments(config).roles["moco-ours-800"]
    _write(results / linear_result(run), {"top1": None, "top5": None, "diverged": True})
    result = run_flatmix("report", "--config", tmp_path / "config.yaml", "--results", results,
                         "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "[diverged (79.8)](#prov-" in markdown and "n/a (79.8)" not in markdown
    assert ">diverged (79.8)</a>" in (tmp_path / "report" / "report.html").read_text()
