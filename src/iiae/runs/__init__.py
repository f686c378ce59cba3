"""The main job and its run folder: train and evaluate, the report, sweeps over seeds and settings, trained runs."""
