"""Federated GAN training across sites with Flower (the chest paper's FedAvg of G and D).

- :mod:`.sites` — K disjoint site subsets of a catalog version (patients never span two sites).
- :mod:`.stats` — pooled Inception statistics merged exactly from per-site (n, μ, Σ).
- :mod:`.config` — what a federated run is.
- :mod:`.client` — the site's Flower ClientApp: the project's GAN train step on its own images.
- :mod:`.server` — FedAvg (Flower's) with round logging, S3 checkpoints, resume and pooled FID.
"""
