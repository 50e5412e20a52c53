"""GAN training: configuration, losses, the Ray Train loop and trainer, the spine paper's methods I-IV and Ray Tune sweeps."""
