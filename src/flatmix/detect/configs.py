"""mmdetection configs for the paper's detection benchmarks, built from the configs mmdetection itself
ships (mmdet/.mim/configs) and written out twice: one plain config.py that mmdet's tools/train.py accepts
(what runs, and its provenance), and beside it override.py, mmdetection's own `_base_` style: the task's
config as its base, then only what flatmix changes, so that a reader sees the paper's changes at a glance.

What the paper sets on top of mmdetection's R50-FPN configs:
- a torchvision-style ResNet initialised from the pretrained checkpoint, every stage fine-tuned
  (frozen_stages=-1); `bn=train`: BN trained with batch statistics (SyncBN under DDP on GPUs);
  `bn=frozen`: BN affine and statistics frozen (requires_grad=False, norm_eval=True); no norm in the FPN.
- VOC: Faster R-CNN on trainval07+12, tested on test2007, (1000, 600), 12 epochs (mmdetection's 4
  epochs over the data repeated 3 times), AP50 (VOC07 11-point) and recall.
- COCO: RetinaNet and Mask R-CNN, train2017 -> val2017, (1333, 800), the 1x schedule, lr 0.02 for a
  batch of 16, scaled linearly for other batch sizes.
`scale=smoke` keeps all of this but shrinks images, epochs and batch for a CPU.
"""

import os
from pathlib import Path

import mmdet
from mmengine.config import Config

from flatmix.detect import TASKS
from flatmix.detect.backbone import pretrained_init


MMDET_CONFIGS = Path(mmdet.__file__).parent / ".mim" / "configs"
BASE_CONFIGS = {  # mmdetection's own config of each task (flatmix.detect.TASKS)
    "voc-faster-rcnn": "pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py",
    "coco-retinanet": "retinanet/retinanet_r50_fpn_1x_coco.py",
    "coco-mask-rcnn": "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py",
}
BASE_BATCH = 16                 # the batch mmdetection's learning rates are given for (8 GPUs x 2 images)
COCO_LR = 0.02                  # the paper's COCO learning rate at BASE_BATCH
SMOKE_SCALE = (320, 192)
SMOKE_WARMUP_ITERS = 10


def _walk(node, fn):
    """Apply fn to every dict in a nested config."""
    if isinstance(node, dict):
        fn(node)
        for v in node.values():
            _walk(v, fn)
    elif isinstance(node, (list, tuple)):
        for v in node:
            _walk(v, fn)


def _set_data_root(cfg, root):
    def fix(d):
        if "data_root" in d:
            d["data_root"] = root
        if d.get("type") == "CocoMetric":
            d["ann_file"] = os.path.join(root, "annotations/instances_val2017.json")
    for key in ("train_dataloader", "val_dataloader", "test_dataloader", "val_evaluator", "test_evaluator"):
        _walk(cfg[key], fix)


def _set_scale(cfg, scale):
    def fix(d):
        if d.get("type") == "Resize":
            d["scale"] = scale
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        _walk(cfg[key], fix)


def backbone_cfg(mmdet_backbone, init_checkpoint, bn, synced):
    """The ResNet of every detector: weights from `init_checkpoint` (None: random), all stages trained."""
    backbone = dict(mmdet_backbone, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=-1)
    if bn == "train":
        backbone.update(norm_cfg=dict(type="SyncBN" if synced else "BN", requires_grad=True), norm_eval=False)
    else:
        backbone.update(norm_cfg=dict(type="BN", requires_grad=False), norm_eval=True)
    backbone["init_cfg"] = pretrained_init(init_checkpoint) if init_checkpoint else None
    return backbone


def build_config(task, data_root, mmdet_backbone, init_checkpoint, bn, scale, synced_bn, batch_per_gpu=2):
    """The full mmengine Config of one detection run (`task` checked by the caller)."""
    dataset = TASKS[task]
    cfg = Config.fromfile(MMDET_CONFIGS / BASE_CONFIGS[task])
    cfg.model.backbone = backbone_cfg(mmdet_backbone, init_checkpoint, bn, synced_bn)
    cfg.model.neck.norm_cfg = None  # no norm layer in the FPN
    _set_data_root(cfg, str(Path(data_root).resolve()) + "/")
    cfg.train_dataloader.batch_size = batch_per_gpu
    cfg.auto_scale_lr = dict(enable=True, base_batch_size=BASE_BATCH)  # linear scaling rule
    if dataset == "coco":
        cfg.optim_wrapper.optimizer.lr = COCO_LR
    if scale == "smoke":
        _set_scale(cfg, SMOKE_SCALE)
        cfg.train_cfg.max_epochs = 1
        cfg.train_cfg.val_begin = 2  # no validation in training: the final test evaluates
        # a few iterations leave every score below mmdetection's 0.05: keep all detections, so that the
        # evaluators measure something
        _walk(cfg.model.test_cfg, lambda d: d.update(score_thr=0.0) if "score_thr" in d else None)
        if dataset == "voc":
            cfg.train_dataloader.dataset.times = 1
        for s in cfg.param_scheduler:
            if s["type"] == "LinearLR":
                s["end"] = SMOKE_WARMUP_ITERS
            if s["type"] == "MultiStepLR":
                s["end"], s["milestones"] = 1, [1]
        for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
            cfg[key].num_workers = 0
            cfg[key].persistent_workers = False
    if dataset == "voc":
        # AP50 (VOC07 11-point, as mmdetection's VOC config) and the recall of the detections at IoU 0.5
        cfg.val_evaluator = dict(type="VOCMetricWithRecall", eval_mode="11points")
        cfg.test_evaluator = cfg.val_evaluator
    # what the config names that only flatmix defines: its checkpoint scheme, its VOC metric
    imports = ["flatmix.detect.backbone"] * bool(init_checkpoint) + ["flatmix.detect.metrics"] * (dataset == "voc")
    if imports:
        cfg.custom_imports = dict(imports=imports, allow_failed_imports=False)
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, max_keep_ckpts=2)
    # the logged losses and metrics also as TensorBoard events (work/<timestamp>/vis_data/), beside mmengine's JSON
    cfg.visualizer.vis_backends = [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]
    cfg.flatmix = dict(task=task, scale=scale, bn=bn, data_root=str(data_root),
                       backbone=str(init_checkpoint) if init_checkpoint else "random")
    return cfg


_MISSING = object()


def override(base, final):
    """What turns config `base` into `final`, as a `_base_` child config holds it: only the keys that
    changed; a dict that lost keys is given whole with `_delete_=True`, a changed list or value whole."""
    changes = {}
    for key, value in final.items():
        old = base.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(old, dict):
            if set(old) - set(value):
                changes[key] = {**value, "_delete_": True}
            elif inner := override(old, value):
                changes[key] = inner
        elif value != old:
            changes[key] = value
    return changes


def override_text(task, cfg):
    """override.py of a config built for `task`: mmdetection's config as `_base_`, then the changes."""
    base = Config.fromfile(MMDET_CONFIGS / BASE_CONFIGS[task]).to_dict()
    return (f"# What flatmix changes in mmdetection's {BASE_CONFIGS[task]} (config.py beside it: the whole)\n"
            f"_base_ = {f'mmdet::{BASE_CONFIGS[task]}'!r}\n\n" + Config(override(base, cfg.to_dict())).pretty_text)
