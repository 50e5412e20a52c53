"""Augmentation experiments: real vs real + synthetic vs synthetic-only classifiers, with statistics."""
