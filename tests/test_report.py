"""The report's shape: every table with made, pending and missing cells, valid self-contained HTML5,
links that lead to provenance, and one-line errors. (The smoke DAG test checks it on real results.)"""

import json
import re

import html5lib
import yaml

from conftest import REPO, assert_one_line_error, run_flatmix
from flatmix.experiments import Experiments

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


def test_report_refuses_bad_input(tmp_path):
    assert_one_line_error(run_flatmix("report", "--config", tmp_path / "missing.yaml"), "missing.yaml")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(dict(CONFIG, preset="everything")))
    assert_one_line_error(run_flatmix("report", "--config", tmp_path / "config.yaml", "--results", tmp_path,
                                      "--out", tmp_path / "r"), "everything")
    assert not (tmp_path / "r" / "report.html").exists()
