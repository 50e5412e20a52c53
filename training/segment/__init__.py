"""Segmentation on Ray Train: MONAI U-Nets on image + mask datasets, Dice-selected, registered like classifiers."""
