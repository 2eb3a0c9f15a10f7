"""The report's shape: every table with made, pending and missing cells and a note on what its marks
mean, valid HTML5 with its values escaped and its figures embedded, links that lead to provenance and to
the results' files, provenance shown once where shared, training curves, a report folder that can be
copied, and one-line errors. (The smoke DAG test checks it on real results.)"""

import json
import re
import shutil
from urllib.parse import unquote, urlsplit

import html5lib
import yaml

from conftest import REPO, assert_one_line_error, run_flatmix
from flatmix.experiments import Experiments
from flatmix.layout import Probe
from flatmix.tables import Tables

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def linear_result(run):
    return Probe(run).path


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _report(config, results, out):
    """Run `flatmix report` on CONFIG (a dict); returns (report.md, report.html)."""
    (out.parent / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_flatmix("report", "--config", out.parent / "config.yaml", "--results", results, "--out", out)
    assert result.returncode == 0, result.stderr
    return (out / "report.md").read_text(), (out / "report.html").read_text()


def _assert_links_stay_local(html, report_dir):
    """Every src/href is an anchor of the page, an embedded image, or a relative link to a file that
    exists (never an absolute path, never the network); returns the relative links."""
    relative = []
    for link in re.findall(r'(?:src|href)="([^"]*)"', html):
        if link.startswith(("#", "data:image/png;base64,")):
            continue
        assert not urlsplit(link).scheme and not link.startswith("/"), link
        assert (report_dir / unquote(link)).is_file(), link
        relative.append(link)
    anchors = set(re.findall(r'href="#([^"]+)"', html))
    assert all(f'id="{a}"' in html for a in anchors)
    return relative


def _section(markdown, heading):
    """The Markdown from HEADING to the next heading of its level or above."""
    start = markdown.index(heading + "\n")
    body = start + len(heading)
    end = re.compile(r"^#{1,%d} " % len(heading.split(" ")[0]), re.M).search(markdown, body)
    return markdown[start:end.start() if end else None]


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
    assert "80.25 n=1 (79.8, +0.45)" in markdown  # ours, one seed (paper, delta)
    assert "pending (78.2)" in markdown and "pending (80.0)" in markdown  # not made: shown, not dropped
    assert "pending (76.16)" in markdown  # Table 1 keeps the paper's two decimals
    assert "abc123" in markdown and "flatmix.sif" in markdown and "86400.0" in markdown

    html5lib.HTMLParser(strict=True).parse(html)  # raises on any HTML5 parse error
    assert html.count('src="data:image/png;base64,') == 1  # Figure 4 embedded (Figure 5 pending here)
    assert "### ImageNet-100\n\npending: *Figure 5 on ImageNet-100 (not the paper's setting" in markdown
    assert "### ImageNet-1K" not in markdown  # in100-main's Figure 5 only
    assert 'href="#prov-' in html
    assert _assert_links_stay_local(html, tmp_path / "report")  # the result's metrics file, at least
    assert "No pretraining run or linear probe is made yet." in markdown  # no curves to draw
    for png in ("figure4.png", "curves.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_shows_each_figure5_with_its_title_once(tmp_path):
    """The paper preset makes two Figure 5s, each headed by its data set: the made one (ImageNet-1K)
    embedded with its maxima (its title is in the image, and its alt text), the ImageNet-100 one pending,
    its title (not the paper's setting) said in the text."""
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
    made = markdown.index("### ImageNet-1K\n")
    pending = markdown.index("### ImageNet-100\n")
    assert made < pending < markdown.index("## Provenance")
    assert f"![{in1k}](figure5-in1k.png)" in markdown[made:pending]  # the image beside the report
    assert "MoCo: mean maximum probability 0.012345" in markdown[made:pending]
    assert "MoCo + mixtures: mean maximum probability 0.006789" in markdown[made:pending]
    assert markdown[pending:].split("\n\n")[1] == f"pending: *{in100}*"
    assert markdown.count(in1k) == 1 and markdown.count(in100) == 1  # each title once
    html5lib.HTMLParser(strict=True).parse(html)
    assert html.count('src="data:image/png;base64,') == 2  # Figure 4 and the made Figure 5
    assert '<h3 id="figure5-in1k">ImageNet-1K</h3>' in html and '<h3 id="figure5-in100">ImageNet-100</h3>' in html
    assert re.search(r"<p>pending: <em>Figure 5 on ImageNet-100 \(not the paper(&#39;|')s setting", html)
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
    assert re.search(r"\[12\.34 n=1 \([\d.]+\) smoke\]", markdown)  # ours and the paper's, no difference
    assert markdown.index("this section exercises the machinery, it is not evidence") > markdown.index("## Claims")
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


PNG = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)</script>"


def _table_section(markdown, number):
    return _section(markdown, re.search(rf"^## Table {number}:.*$", markdown, re.M).group(0))


def test_report_html_escapes_what_the_results_hold(tmp_path):
    """A value read from a results file (an evaluation setting, a provenance field, a run's config) is
    text in the HTML, never markup; the Markdown shows it as written, in code."""
    config = dict(CONFIG, preset="in100-main")
    results = tmp_path / "results"
    run = Experiments(config).roles["moco-ours-800"]
    _write(results / linear_result(run), {"top1": 80.0, "top5": 95.0, "device": HOSTILE,
                                          "provenance": {"git_commit": "abc123", "container_image": HOSTILE}})
    (results / "pretrain" / run).mkdir(parents=True)
    (results / "pretrain" / run / "config.yaml").write_text(f"method: moco  # {HOSTILE}\n")
    markdown, html = _report(config, results, tmp_path / "report")
    html5lib.HTMLParser(strict=True).parse(html)
    assert "<script" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 3
    assert f"device `{HOSTILE}`" in markdown and f"container image: `{HOSTILE}`" in markdown
    assert f"method: moco  # {HOSTILE}" in markdown and "&lt;" not in markdown


def test_report_shows_shared_provenance_once_and_each_difference_per_result(tmp_path):
    """Two results built alike but from different commits: the packages, image and hardware are shown
    once for both, each commit under its own result only."""
    config = dict(CONFIG, preset="in100-main")
    results = tmp_path / "results"
    roles = Experiments(config).roles
    commits = {roles["moco-800"]: "aaa111", roles["moco-ours-800"]: "bbb222"}
    for run, commit in commits.items():
        _write(results / linear_result(run), {"top1": 79.0, "top5": 95.0, "provenance": {
            "git_commit": commit, "container_image": "flatmix.sif", "python": "3.11.7",
            "packages": {"torch": "2.14.1", "numpy": "2.4.6"}, "hardware": {"host": "node1", "gpus": ["NVIDIA H100"]}}})
    markdown, html = _report(config, results, tmp_path / "report")
    shared = markdown[markdown.index("## Provenance"):markdown.index('<a id="prov-')]
    assert "- packages: `torch 2.14.1, numpy 2.4.6`" in shared and "- container image: `flatmix.sif`" in shared
    assert "- hardware: `host node1, gpus NVIDIA H100`" in shared
    assert markdown.count("torch 2.14.1") == 1 and html.count("torch 2.14.1") == 1
    for run, commit in commits.items():
        entry = _section(markdown, f"### {linear_result(run)}")
        assert f"evaluation's provenance: git commit `{commit}`\n" in entry
        assert markdown.count(commit) == 1 and html.count(commit) == 1


def test_report_links_each_result_to_its_files_relative_to_the_report(tmp_path):
    """A provenance entry links its metrics file, its rule log and its pretraining run's files (those that
    exist) by relative, URL-quoted links that resolve from the report folder (here across a results folder
    whose name holds a space)."""
    config = dict(CONFIG, preset="in100-main")
    results = tmp_path / "my results"
    roles = Experiments(config).roles
    made, bare = roles["moco-ours-800"], roles["moco-800"]
    for run in (made, bare):
        _write(results / linear_result(run), {"top1": 79.0, "top5": 95.0})
    _write(results / "pretrain" / made / "summary.json",
           {"epochs": 800, "final_loss": 6.5, "processes": 4, "device": "cuda:0", "wall_time_s": 86400.0})
    (results / "pretrain" / made / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "loss": 9.0}) + "\n")
    for log in (f"logs/linear/{made}.log", f"logs/pretrain/{made}.log"):
        (results / log).parent.mkdir(parents=True, exist_ok=True)
        (results / log).write_text("done\n")
    markdown, html = _report(config, results, tmp_path / "report")
    report = tmp_path / "report"
    assert len(set(_assert_links_stay_local(html, report))) == 6  # 5 of the made run's files, 1 of the bare one's
    assert all((report / unquote(link)).is_file() for link in re.findall(r"\]\(([^#)][^)]*)\)", markdown))
    entry = _section(markdown, f"### {linear_result(made)}")
    for label, rel in (("metrics", linear_result(made)), ("log", f"logs/linear/{made}.log"),
                       ("pretraining summary", f"pretrain/{made}/summary.json"),
                       ("pretraining metrics", f"pretrain/{made}/metrics.jsonl"),
                       ("pretraining log", f"logs/pretrain/{made}.log")):
        assert f"[{label}](../my%20results/{rel})" in entry, label
    bare_entry = _section(markdown, f"### {linear_result(bare)}")
    assert f"- files: [metrics](../my%20results/{linear_result(bare)})\n" in bare_entry  # nothing else exists


def test_report_folder_reads_the_same_when_copied_elsewhere(tmp_path):
    """Every image report.md shows lies in the report folder (each made Figure 5 copied there), so a copy
    of the folder alone shows them all."""
    from PIL import Image

    results = tmp_path / "results"
    _write(results / "flatness" / "in100" / "flatness.json", {"models": {"MoCo": {"max_probability": 0.01}}})
    Image.new("RGB", (8, 8)).save(results / "flatness" / "in100" / "flatness.png")
    _write(results / linear_result("smoke-moco"),
           {"top1": 10.0, "top5": 20.0, "history": [{"epoch": 1, "loss": 4.0, "top1": 10.0, "top5": 20.0}]})
    _report(dict(CONFIG, preset="smoke"), results, tmp_path / "report")
    copy = shutil.copytree(tmp_path / "report", tmp_path / "elsewhere" / "report")
    shutil.rmtree(tmp_path / "report")
    shutil.rmtree(results)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (copy / "report.md").read_text())
    assert sorted(images) == ["curves.png", "figure4.png", "figure5-in100.png"]
    assert all((copy / image).read_bytes()[:8] == PNG for image in images)


def test_report_plots_each_runs_training_curves(tmp_path):
    """A pretraining run's loss and contrastive top-1 (its metrics.jsonl, a line per logged step: averaged
    per epoch) and a linear probe's history are drawn in curves.png, and the report names the runs drawn;
    runs not made are absent, and a line still being written is left out."""
    from flatmix.report import Results, pretrain_curve

    results = tmp_path / "results"
    steps = [{"epoch": e, "step": s, "loss": 10.0 - s, "acc1": 5.0 * s} for e, s in ((0, 1), (0, 2), (1, 3), (1, 4))]
    (results / "pretrain" / "smoke-moco").mkdir(parents=True)
    (results / "pretrain" / "smoke-moco" / "metrics.jsonl").write_text(
        "".join(json.dumps(s) + "\n" for s in steps) + '{"epoch": 2, "st')
    _write(results / linear_result("smoke-cmc"),
           {"top1": 3.0, "top5": 9.0, "history": [{"epoch": 1, "loss": 4.6, "top1": 1.0, "top5": 5.0},
                                                   {"epoch": 2, "loss": None, "top1": 3.0, "top5": 9.0}]})
    assert pretrain_curve(Results(results), "smoke-moco") == {1: (8.5, 7.5), 2: (6.5, 17.5)}

    markdown, html = _report(dict(CONFIG, preset="smoke"), results, tmp_path / "report")
    assert (tmp_path / "report" / "curves.png").read_bytes()[:8] == PNG
    curves = _section(markdown, "## Training curves")
    assert "](curves.png)" in curves
    assert re.search(r"^- pretraining runs .*: `smoke-moco`$", curves, re.M)
    assert re.search(r"^- linear probes .*: `smoke-cmc`$", curves, re.M)
    assert "pretraining loss can rise from epoch 1 to 2" in curves  # said in a smoke report
    smoke_free, _ = _report(dict(CONFIG, preset="in100-main"), results, tmp_path / "in100-report")
    assert "can rise from epoch 1 to 2" not in smoke_free
    assert html.count('src="data:image/png;base64,') == 2  # Figure 4 and the curves (Figure 5 pending)
    assert "<code>smoke-moco</code>" in html[html.index('id="curves"'):html.index('id="provenance"')]


def test_benchmark_report_shows_the_paper_rows_beside_the_checkpoint(tmp_path):
    """preset benchmark: the paper's MoCo and ours rows are its numbers alone, marked as such; the
    outside checkpoint's row is ours to fill."""
    config = dict(CONFIG, preset="benchmark", data=dict(CONFIG["data"], voc="/data/VOCdevkit"),
                  transfer=dict(CONFIG["transfer"], checkpoints={"mine": "/ckpt/r50.pth"}))
    markdown, _ = _report(config, tmp_path / "results", tmp_path / "report")
    table = _section(markdown, "## Table 7a: VOC Faster R-CNN R50-FPN, No Freeze (%)")
    assert "| MoCo (K=16384) | paper's (75.1) | paper's (90.2) |" in table
    assert "| mine (outside checkpoint) | pending (–) | pending (–) |" in table
    assert "paper's: the paper's number alone: this preset does not run that row" in table


def test_report_explains_the_marks_under_each_table(tmp_path):
    """Under each table, a note says what the marks it shows mean (pending, n/a, diverged, smoke, –), and
    only those."""
    results = tmp_path / "results"
    _write(results / linear_result("smoke-moco"), {"top1": None, "top5": None, "diverged": True})
    _write(results / "detect" / "smoke-moco-mix" / "voc-faster-rcnn-train" / "metrics.json",
           {"AP50": 70.0, "recall": None})
    markdown, html = _report(dict(CONFIG, preset="smoke"), results, tmp_path / "report")
    table1, table5, table7a = (_table_section(markdown, n) for n in ("1", "5", "7a"))
    assert "\n*pending: not made yet (the paper's number in brackets).*\n" in table1
    assert "diverged: the linear probe's loss diverged" in table5 and "smoke: " in table5 and "n/a" not in table5
    assert "n/a: made, but the result holds no such number" in table7a and "–: not in the paper" in table7a
    assert "diverged" not in table7a
    assert html.count('<p class="terms">') == len(Tables(Experiments(dict(CONFIG, preset="smoke"))).tables)
    assert "<em>n/a</em>: made, but" in html


def _seeded(preset, seeds):
    return dict(CONFIG, preset=preset, experiments={**CONFIG["experiments"], "seeds": seeds})


def test_a_cell_of_several_seeds_shows_its_mean_interval_and_n(tmp_path):
    """Table 5's MoCo G+R over three seeds: the mean ± the 95% t half-width, n, and the difference of the
    mean to the paper; a seed not made yet is said to be pending, and its neighbours' cells still count."""
    config = _seeded("in100-main", {"table5": 3})
    e = Experiments(config)
    run = e.roles["moco-ours-800"]
    assert e.replicas(run) == [run, f"{run}-s1", f"{run}-s2"]
    results = tmp_path / "results"
    # mean 81, sd 1: half-width 4.303 / sqrt(3)
    for replica, top1 in zip(e.replicas(run), (80.0, 81.0, 82.0), strict=False):
        _write(results / linear_result(replica), {"top1": top1, "top5": 95.0})
    for replica, top1 in zip(e.replicas(e.roles["moco-800"])[:2], (78.0, 79.0), strict=False):
        _write(results / linear_result(replica), {"top1": top1, "top5": 95.0})
    markdown, html = _report(config, results, tmp_path / "report")
    assert "81.00 ± 2.48 n=3 (79.8, +1.20)" in markdown
    assert "78.50 ± 6.35 n=2, 1 pending (78.2, +0.30)" in markdown
    _assert_links_stay_local(html, tmp_path / "report")  # each seed's provenance entry is an anchor of the page
    from flatmix.report import anchor
    assert f'id="{anchor(Probe(run + "-s2"))}"' in html


def test_claims_give_a_verdict_on_every_claim_from_welch_intervals(tmp_path):
    """Every claim of flatmix.paper.CLAIMS is a row with a verdict: here Table 5's MoCo claims from three
    seeds a side (reproduced, opposite, inconclusive), those on one seed inconclusive, the rest not run;
    the kNN column judges the same runs on kNN top-1."""
    from flatmix.layout import Knn
    from flatmix.paper import CLAIMS
    config = _seeded("in100-main", 3)
    e = Experiments(config)
    grid = e.grids["table5"]["moco"]
    made = {"800": (78.0, 78.2, 78.4), "G+R": (79.6, 79.8, 80.0),  # clearly above 800: reproduced
            "G": (77.0, 77.2, 77.4),                               # clearly below 800: opposite
            "R": (77.5, 79.0, 80.5)}                               # spans 800's: inconclusive
    for key, values in made.items():
        for replica, top1 in zip(e.replicas(grid[key]), values, strict=False):
            _write(results_file := tmp_path / "results" / linear_result(replica), {"top1": top1, "top5": 95.0})
            _write(results_file.parents[2] / Knn(replica).path, {"top1": top1 - 10, "top5": 90.0})
    _write(tmp_path / "results" / linear_result(grid["240"]), {"top1": 73.0, "top5": 90.0})  # one seed only
    markdown, html = _report(config, tmp_path / "results", tmp_path / "report")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in markdown.split("## Claims")[1].split("\n## ")[0]
            .splitlines() if line.startswith("| ") and not line.startswith("| claim")}
    assert len(rows) == len(CLAIMS)
    assert all(re.search(r"\*\*(reproduced|opposite|inconclusive|not run)\*\*", row) for row in rows.values())
    both = rows["MoCo at 800 epochs: global and region mixtures improve it"]
    assert "| +1.60 | +1.60 [+1.15, +2.05] | 3 / 3 | yes | **reproduced** | +1.60 [+1.15, +2.05] | reproduced |" in both
    assert "**opposite**" in rows["MoCo at 800 epochs: global mixtures improve it"]
    assert "**inconclusive**" in rows["MoCo at 800 epochs: region mixtures improve it"]
    assert "| 3 / 1 |" in rows["MoCo: 800 epochs beat 240"] and "**inconclusive**" in rows["MoCo: 800 epochs beat 240"]
    assert "**not run**" in rows["ImageNet-1K R50: the mixtures improve MoCo"]
    assert 'id="claim-moco-gr-helps"' in html and "exercises the machinery" not in markdown
