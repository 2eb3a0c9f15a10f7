"""VOC AP50 with the recall of Table 7, registered for mmdetection configs (custom_imports).

mmdetection's VOCMetric gives AP50; its 'recall' mode goes through eval_recalls, which fails under
numpy 2 (a ragged np.array), and measures class-agnostic proposal recall besides. The paper's recall is
the detections' recall at IoU 0.5 per class (the last point of each class's recall curve, as
mmdetection prints in its VOC table), averaged over the classes that have ground truth.
"""

from collections import OrderedDict

from mmdet.evaluation.functional import eval_map
from mmdet.evaluation.metrics import VOCMetric
from mmdet.registry import METRICS
from mmengine.logging import MMLogger


@METRICS.register_module()
class VOCMetricWithRecall(VOCMetric):
    def __init__(self, **kwargs):
        super().__init__(metric="mAP", iou_thrs=0.5, **kwargs)

    def compute_metrics(self, results):
        gts, preds = zip(*results)
        dataset_type = self.dataset_meta.get("dataset_type")
        dataset = "voc" if dataset_type in ("VOC2007", "VOC2012") else self.dataset_meta["classes"]
        mean_ap, per_class = eval_map(preds, gts, iou_thr=0.5, dataset=dataset, logger=MMLogger.get_current_instance(),
                                      eval_mode=self.eval_mode, use_legacy_coordinate=True)
        recalls = [float(c["recall"].reshape(-1)[-1]) if c["recall"].size else 0.0
                   for c in per_class if c["num_gts"] > 0]
        return OrderedDict(mAP=mean_ap, AP50=round(mean_ap, 3), recall=sum(recalls) / max(len(recalls), 1))
