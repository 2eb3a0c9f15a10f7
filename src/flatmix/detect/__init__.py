"""Downstream detection with mmdetection: config building and the training runner."""
