"""Downstream detection with mmdetection: config building and the training runner.

TASKS is the one home of which data set each of the paper's detection tasks trains on (read by the CLI,
the rules, the plan and the configs); it lives here, free of mmdetection's import, so that they can.
"""

TASKS = {"voc-faster-rcnn": "voc", "coco-retinanet": "coco", "coco-mask-rcnn": "coco"}
