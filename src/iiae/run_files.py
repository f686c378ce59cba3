"""The names of the files in a run folder, in one place (the main job's and the zero-shot SBIR runs')::

    config.yaml              the exact config of the run (CONFIG)
    checkpoints/             last.ckpt, step=NNNNNNNN.ckpt, best.ckpt (CHECKPOINTS, LAST_CHECKPOINT, ...)
    model/                   model.safetensors + config.json (MODEL_DIR; iiae.IIAE.from_pretrained)
    feature_extractor/       zero-shot SBIR from raw images: the image -> feature network (FEATURE_EXTRACTOR_DIR)
    logs/metrics.csv         every logged loss term (LOGS_DIR, METRICS_LOG)
    metrics.json             what the run measured (METRICS); written last: its presence marks a finished run
    report.md                the run's report (REPORT), beside the figures it shows
    .iiae.lock               held while a process writes the folder (LOCK)
    error.log                the traceback of an unexpected failure, if one happened (ERROR_LOG)
    data_files.json          the data files the run trains on, by content; --resume refuses other data (DATA_FILES)
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"
STEP_CHECKPOINT = re.compile(r"^step=(\d+)\.ckpt$")  # step=00000250.ckpt (Lightning's ModelCheckpoint files)
STEP_CHECKPOINT_FORMAT = "step={step:08d}"  # ModelCheckpoint's filename template for STEP_CHECKPOINT
MODEL_DIR = "model"
FEATURE_EXTRACTOR_DIR = "feature_extractor"
LOGS_DIR = "logs"
METRICS_LOG = Path(LOGS_DIR) / "metrics.csv"
METRICS = "metrics.json"
REPORT = "report.md"
LOCK = ".iiae.lock"
DATA_FILES = "data_files.json"
ERROR_LOG = "error.log"  # the traceback of an unexpected failure during the run (a bug), for the bug report
SWEEP_SUMMARY = "summary.json"
SWEEP_SUMMARY_MARKDOWN = "summary.md"
# Figures of the main job (iiae.evaluation.figures) and of a zero-shot SBIR run
TRANSLATION_FIGURE = "translation.png"
ANALOGY_FIGURE = "analogy.png"
TRAVERSAL_FIGURE = "traversal.png"
LOSS_CURVES_FIGURE = "loss_curves.png"
RETRIEVALS_FIGURE = "retrievals.png"
