"""The paper's published numbers (Shen et al., "Rethinking Image Mixture for Unsupervised Visual
Representation Learning"), keyed by what each number measures, for the report to set beside ours.

Linear top-1 (%) for Tables 1-6 and Figure 4; VOC AP50/recall and COCO AP (%) for Tables 7-8.
Figure 4's values are read off the authors' plot (approximate); None marks a "–" in the paper.
"""

# Table 1: MoCo, 400 epochs, by the number of global mixtures (mixing steps)
TABLE1 = {2: 76.16, 3: 76.24, 4: 76.30, 5: 75.64, 6: 75.86, 7: 75.96}
# Table 2: MoCo, 400 epochs, by the number of region mixtures (mixing steps)
TABLE2 = {2: 76.02, 3: 76.16, 4: 75.56, 5: 76.36, 6: 75.66, 7: 75.44}
# Table 3: MoCo, 400 epochs, context pixel decay
TABLE3 = {0.1: 76.3, 0.2: 76.8, 0.3: 76.3, 0.4: 76.0, 0.5: 76.2, 0.6: 76.5, 0.7: 75.9, 0.8: 75.8, 0.9: 76.2,
          0.99: 76.3, 1.0: 76.5}
# Table 4: CMC, 800 epochs, global probability p (2 global mixes; region p = 0.1 in G+R)
TABLE4 = {"baseline": 78.7,
          "G": {0.1: 79.4, 0.2: 79.1, 0.3: 78.6, 0.4: 77.7},
          "G+R": {0.1: 79.7, 0.2: 79.4, 0.3: 79.0, 0.4: 78.2}}
# Table 5: ImageNet-100; 240-epoch baseline, 800 epochs, + global, + region, + both
TABLE5 = {"moco": {"240": 73.4, "800": 78.2, "G": 79.3, "R": 79.5, "G+R": 79.8},
          "cmc": {"240": 75.7, "800": 78.7, "G": 79.7, "R": 79.6, "G+R": 80.0}}
# Figure 4: accuracy against epochs, with ("ours") and without mixtures
FIGURE4 = {"moco": {"baseline": {240: 73.4, 400: 76.1, 600: 77.4, 800: 78.2},
                    "ours": {240: 74.1, 400: 77.0, 600: 78.8, 800: 79.8}},
           "cmc": {"baseline": {240: 75.4, 400: 77.7, 600: 78.5, 800: 78.7},
                   "ours": {240: 75.9, 400: 78.6, 600: 79.5, 800: 80.0}}}
# Table 6: ImageNet-1K, 200 epochs (the authors' MoCo re-implementation, K = 65536)
TABLE6 = {"resnet50": {"baseline": 59.5, "ours": 60.8}, "resnet50w2": {"baseline": 64.6, "ours": 65.9}}
# Table 7: VOC Faster R-CNN (AP50, recall); "random" is from MoCo's paper (R50-dilated-C5, 18 epochs)
TABLE7 = {"train": {"random": (58.0, None), "moco": (75.1, 90.2), "ours-k16384": (75.8, 90.7),
                    "ours-k65536": (76.4, 90.5)},
          "frozen": {"random": (None, None), "moco": (72.7, 92.3), "ours-k16384": (73.3, 92.8),
                     "ours-k65536": (73.8, 93.3)}}
# Table 8a: COCO RetinaNet (AP, AP50, AP75, APs, APm, APl)
TABLE8A = {"moco": (30.7, 48.2, 32.7, 15.7, 33.5, 40.7),
           "ours-k16384": (31.8, 49.8, 34.2, 16.7, 34.7, 42.2),
           "ours-k65536": (31.9, 50.2, 34.1, 16.5, 35.0, 41.7)}
# Table 8b: COCO Mask R-CNN (bbox AP, AP50, AP75; mask AP, AP50, AP75)
TABLE8B = {"moco": (31.2, 51.3, 33.3, 29.1, 48.2, 30.6),
           "ours-k16384": (32.8, 53.3, 35.1, 30.3, 50.1, 32.1),
           "ours-k65536": (33.7, 54.4, 36.5, 31.1, 51.3, 32.7)}

# The paper's claims, each a comparison it states in its text or shows in its tables: what it says, where,
# and its terms, [(+1 | -1, address)], whose sum is the claimed difference (positive: the claim holds). An
# address names a cell as flatmix.tables.Tables.cell reads it, or a Figure 5 curve ("figure5" | "figure5-in100",
# label) by its maximum probability; the paper's own difference is the same sum of its numbers above. Figure
# 5 has no numbers, so its claims carry the sign the paper shows instead.
def _vs(better, worse):
    return ((+1, better), (-1, worse))


def _gain_grows(method):  # the mixtures' gain at 800 epochs minus their gain at 240 (Figure 4)
    return ((+1, ("figure4", method, "ours", 800)), (-1, ("figure4", method, "baseline", 800)),
            (-1, ("figure4", method, "ours", 240)), (+1, ("figure4", method, "baseline", 240)))


MOCO_400 = ("figure4", "moco", "baseline", 400)  # Tables 1-3's baseline: MoCo at 400 epochs without mixtures
CLAIMS = (
    {"id": "global-helps-moco", "claim": "global mixtures (4 mixes) improve MoCo at 400 epochs",
     "source": "Table 1, Figure 4", "terms": _vs(("table1", 4), MOCO_400)},
    {"id": "global-more-than-2", "claim": "more global mixes than 2 do better: 4 against 2",
     "source": "Table 1, text", "terms": _vs(("table1", 4), ("table1", 2))},
    {"id": "region-helps-moco", "claim": "region mixtures (5 mixes) improve MoCo at 400 epochs",
     "source": "Table 2, Figure 4", "terms": _vs(("table2", 5), MOCO_400)},
    {"id": "region-more-than-2", "claim": "more region mixes than 2 do better: 5 against 2",
     "source": "Table 2, text", "terms": _vs(("table2", 5), ("table2", 2))},
    {"id": "region-beats-global", "claim": "region mixtures beat global ones, each at its best count",
     "source": "Tables 1-2, text", "terms": _vs(("table2", 5), ("table1", 4))},
    {"id": "decay-helps", "claim": "context pixel decay 0.2 beats no decay (1.0)",
     "source": "Table 3", "terms": _vs(("table3", 0.2), ("table3", 1.0))},
    {"id": "global-helps-cmc", "claim": "global mixtures (p 0.1) improve CMC at 800 epochs",
     "source": "Table 4", "terms": _vs(("table4", "G", 0.1), ("table4", "baseline"))},
    {"id": "cmc-both-beat-global", "claim": "CMC: global and region mixtures together beat global alone (p 0.1)",
     "source": "Table 4, text", "terms": _vs(("table4", "G+R", 0.1), ("table4", "G", 0.1))},
    {"id": "cmc-small-p", "claim": "CMC wants a small global probability: p 0.1 beats p 0.4",
     "source": "Table 4, text", "terms": _vs(("table4", "G", 0.1), ("table4", "G", 0.4))},
    *({"id": f"{m}-budget", "claim": f"{name}: 800 epochs beat 240", "source": "Table 5, Figure 4",
       "terms": _vs(("table5", m, "800"), ("table5", m, "240"))} for m, name in (("moco", "MoCo"), ("cmc", "CMC"))),
    *({"id": f"{m}-{key.lower().replace('+', '')}-helps", "claim": f"{name} at 800 epochs: {what} improve it",
       "source": "Table 5", "terms": _vs(("table5", m, key), ("table5", m, "800"))}
      for m, name in (("moco", "MoCo"), ("cmc", "CMC"))
      for key, what in (("G", "global mixtures"), ("R", "region mixtures"), ("G+R", "global and region mixtures"))),
    *({"id": f"{m}-both-beat-best-single", "claim": f"{name} at 800 epochs: both mixtures beat the better one alone "
       f"({single})", "source": "Table 5, text", "terms": _vs(("table5", m, "G+R"), ("table5", m, key))}
      for m, name, key, single in (("moco", "MoCo", "R", "region"), ("cmc", "CMC", "G", "global"))),
    {"id": "moco-region-beats-global-800", "claim": "MoCo at 800 epochs: region mixtures beat global ones",
     "source": "Table 5, text", "terms": _vs(("table5", "moco", "R"), ("table5", "moco", "G"))},
    *({"id": f"{m}-gain-grows", "claim": f"{name}: the mixtures' gain grows with epochs (800 against 240)",
       "source": "Figure 4, text", "terms": _gain_grows(m)} for m, name in (("moco", "MoCo"), ("cmc", "CMC"))),
    {"id": "cmc-moco-gap-shrinks", "claim": "without mixtures, CMC's lead over MoCo shrinks from 240 to 800 epochs",
     "source": "Figure 4, text",
     "terms": ((+1, ("figure4", "cmc", "baseline", 240)), (-1, ("figure4", "moco", "baseline", 240)),
               (-1, ("figure4", "cmc", "baseline", 800)), (+1, ("figure4", "moco", "baseline", 800)))},
    *({"id": f"in1k-{arch}", "claim": f"ImageNet-1K {label}: the mixtures improve MoCo", "source": "Table 6",
       "terms": _vs(("table6", arch, "ours"), ("table6", arch, "baseline"))}
      for arch, label in (("resnet50", "R50"), ("resnet50w2", "R50 w2x"))),
    *({"id": f"flatter-{key}", "claim": f"the mixtures flatten the final layer's softmax ({where}): a lower "
       "mean maximum probability", "source": "Figure 5", "sign": -1,
       "terms": _vs((key, "MoCo + mixtures"), (key, "MoCo"))}
      for key, where in (("figure5", "ImageNet-1K"), ("figure5-in100", "ImageNet-100, not the paper's setting"))),
    *({"id": f"{table}-k{K}-{metric.lower()}", "claim": f"{what}: ours (K={K}) beats MoCo in {label}",
       "source": f"Table {table[5:]}", "terms": _vs((table, f"ours-k{K}", metric), (table, "moco", metric))}
      for table, what, metric, label in (("table7a", "VOC Faster R-CNN, BN trained", "AP50", "AP50"),
                                         ("table7b", "VOC Faster R-CNN, BN frozen", "AP50", "AP50"),
                                         ("table8a", "COCO RetinaNet", "bbox_AP", "box AP"),
                                         ("table8b", "COCO Mask R-CNN", "bbox_AP", "box AP"),
                                         ("table8b", "COCO Mask R-CNN", "mask_AP", "mask AP"))
      for K in (16384, 65536)),
)

# Sizes of the real data sets, for the cost plan before any data is prepared
IMAGENET100_TRAIN, IMAGENET100_VAL = 126_689, 5_000
IMAGENET1K_TRAIN, IMAGENET1K_VAL = 1_281_167, 50_000
VOC0712_TRAINVAL, VOC07_TEST = 16_551, 4_952
COCO_TRAIN2017, COCO_VAL2017 = 117_266, 5_000  # train2017 images with annotations (mmdetection's filter)
