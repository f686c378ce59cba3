"""What a trained model is measured by: cross-domain retrieval, fidelity and leakage measures, probes, figures."""
