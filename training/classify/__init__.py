"""Classifier training on Ray Train: configuration, the loop, the trainer and pretrained weights."""
