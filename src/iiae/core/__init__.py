"""The model and its mathematics: config dataclasses, the IIAE objective, network architectures, the IIAE class.

Pure PyTorch: nothing here imports Lightning, the data sets, training or the command line.
"""
