"""The report's Claims: each of the paper's claims (flatmix.paper.CLAIMS) judged on our results over seeds.

A claim's difference is a sum of cells (flatmix.stats.contrast_interval); its verdict is **reproduced**
when our 95% interval excludes 0 on the paper's side, **opposite** when it excludes 0 on the other side,
**inconclusive** when it spans 0 or a cell has fewer than 2 seeds, and **not run** while a cell has no
result. Claims on linear top-1 are judged a second time on kNN top-1 of the same runs (the paper has no
kNN numbers: only its sign is compared).
"""

from flatmix import cifar_anchors, paper
from flatmix.experiments import FIGURE5_PARTS
from flatmix.layout import Flatness, Knn, Probe
from flatmix.stats import contrast_interval, verdict
from flatmix.workflow_config import get

VERDICTS = {
    "reproduced": "our 95% interval excludes 0 on the paper's side",
    "opposite": "our 95% interval excludes 0 on the other side",
    "inconclusive": "our interval spans 0, or a side has fewer than 2 seeds",
    "not run": "a side has no result yet (or no run in this config)",
}


def knn_values(cell, results):
    """The kNN top-1 of each seed of a probe cell's run."""
    return [m["top1"] for r in cell.replicas if (m := results.read(Knn(r.run).path)) and m.get("top1") is not None]


def _flatness_values(experiments, results, part, label):
    key = FIGURE5_PARTS[part]
    doc = results.read(Flatness(key).path) if key in experiments.flatness else None
    model = (doc or {}).get("models", {}).get(label)
    return [model["max_probability"]] if model else []


def _judge(terms, sign, published):
    """{ours, low, high, n, inside, verdict} of one claim's terms [(coefficient, values)]."""
    n = [len(v) for _, v in terms]
    if min(n) == 0:
        return {"ours": None, "low": None, "high": None, "n": n, "inside": None, "verdict": "not run"}
    ours, low, high = contrast_interval(terms)
    inside = None if low is None or published is None else low <= published <= high
    return {"ours": ours, "low": low, "high": high, "n": n, "inside": inside, "verdict": verdict(sign, low, high)}


def judge(claim, experiments, tables, results):
    """One claim's row: the paper's difference, ours on linear top-1 (or the detection metric, or Figure
    5's maximum) and, for probe claims, on kNN top-1."""
    cells, linear = [], []
    for coefficient, address in claim["terms"]:
        if address[0] in FIGURE5_PARTS:
            cells.append(None)
            linear.append((coefficient, _flatness_values(experiments, results, *address)))
        else:
            cell = tables.cell(address)
            cells.append(cell)
            linear.append((coefficient, results.values(cell) if cell else []))
    papers = [c.paper if c else None for c in cells]
    published = None if None in papers else sum(k * p for (k, _), p in zip(claim["terms"], papers, strict=False))
    sign = claim.get("sign") or (1 if published is None or published >= 0 else -1)
    row = {"id": claim["id"], "claim": claim["claim"], "source": claim["source"], "paper": published, "sign": sign,
           "smoke": any(c and c.smoke for c in cells), "linear": _judge(linear, sign, published), "knn": None}
    if cells and all(c and isinstance(c.result, Probe) for c in cells):
        knn = [(k, knn_values(c, results)) for (k, _), c in zip(claim["terms"], cells, strict=False)]
        row["knn"] = _judge(knn, sign, None)
    return row


def claims_view(experiments, tables, results):
    """Every claim of the paper, judged (see the module's docstring); for a CIFAR preset its claims
    (flatmix.cifar_anchors), on the kNN monitor's top-1."""
    claims = paper.CLAIMS
    if experiments.cifar:
        claims = cifar_anchors.claims(experiments.preset, get(experiments.config, "cifar.mixture_loss"))
    return [judge(claim, experiments, tables, results) for claim in claims]
