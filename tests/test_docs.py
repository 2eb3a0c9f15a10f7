"""The front page and the docs site: README.md short, with the set-up first and the pipeline picture
current; the reference pages built strictly by mkdocs (broken links fail), every page reachable."""

from pathlib import Path
import re
import subprocess
import sys

import yaml

from conftest import REPO

BIN = Path(sys.executable).parent
README = (REPO / "README.md").read_text()


def test_the_readme_is_a_front_page():
    """At most about 1,500 words, the set-up command in its first 40 lines, and every link it has to a
    reference page pointing at a page that exists."""
    assert len(README.split()) <= 1500, len(README.split())
    assert any("bash envs/install.sh && " in line for line in README.splitlines()[:40])
    links = re.findall(r"\]\((docs/[^)#]+)", README)
    missing = [link for link in links if not (REPO / link).is_file()]
    assert links and not missing, missing


def test_the_pipeline_picture_matches_the_rules():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "rulegraph"), "--check"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "workflow_config --> report" in README and "pretrain --> detect" in README


def _nav_pages(nav):
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            yield from _nav_pages(value)
        else:
            yield value


def test_the_docs_build_strictly_and_every_page_is_in_the_nav(tmp_path):
    config = REPO / "docs" / "mkdocs.yml"
    result = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "-f", str(config), "-d", str(tmp_path / "site")],
                            capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(BIN)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "detection" / "index.html").is_file()
    nav = yaml.load(config.read_text(), Loader=yaml.BaseLoader)["nav"]  # BaseLoader: the !!python/name tag unread
    pages = {p.name for p in (REPO / "docs" / "pages").glob("*.md")}
    assert set(_nav_pages(nav)) == pages
