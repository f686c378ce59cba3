"""Training with PyTorch Lightning: the LightningModule, checkpoints, exact resume, guards, DDP, model selection."""
