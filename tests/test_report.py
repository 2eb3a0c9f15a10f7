"""The report's shape: every table with made, pending and missing cells, valid self-contained HTML5,
links that lead to provenance, and one-line errors. (The smoke DAG test checks it on real results.)"""

import json
import re

import html5lib
import yaml

from conftest import REPO, assert_one_line_error, run_flatmix

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_report_sets_ours_beside_the_paper_and_links_provenance(tmp_path):
    config = dict(CONFIG, preset="in100-main")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    results = tmp_path / "results"
    run = "in100-moco-g4p0.5-r5p0.5d0.2-e800-k16384"
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
    assert not re.search(r'(src|href)="(?!#|data:)', html), "the HTML must not load anything from outside"
    links = set(re.findall(r'href="#([^"]+)"', html))
    assert links and all(f'id="{a}"' in html for a in links)
    assert (tmp_path / "report" / "figure4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_refuses_bad_input(tmp_path):
    assert_one_line_error(run_flatmix("report", "--config", tmp_path / "missing.yaml"), "missing.yaml")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(dict(CONFIG, preset="everything")))
    assert_one_line_error(run_flatmix("report", "--config", tmp_path / "config.yaml", "--results", tmp_path,
                                      "--out", tmp_path / "r"), "everything")
    assert not (tmp_path / "r" / "report.html").exists()
