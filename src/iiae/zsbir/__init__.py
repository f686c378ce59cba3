"""Zero-shot sketch-based image retrieval with IIAE (the paper's Sketchy Extended experiment, Table 3).

    iiae zs-sbir train --data-root SKETCHY_FOLDER --out runs/zs                  # raw images, ImageNet features
    iiae zs-sbir train --data-root SKETCHY_FOLDER --unseen seeded --threads 1    # a seeded split of 25 classes
    iiae zs-sbir train --data-source official --data-root FEATURES --out runs/zs_vgg   # precomputed features
    iiae zs-sbir train ... --method supervised          # the supervised embedding baseline
    iiae zs-sbir train ... --set loss.lambda_=0         # IIAE without the interaction information terms
    iiae zs-sbir evaluate runs/zs [--json out.json]
    iiae zs-sbir retrieve runs/zs --query my_sketch.png --gallery PHOTOS   # one's own sketch -> top photos

Modules: :mod:`~iiae.zsbir.features` (data and class splits), :mod:`~iiae.zsbir.feature_net` (images -> features;
:mod:`~iiae.zsbir.efficientnet`, :mod:`~iiae.zsbir.pretrained_features`, :mod:`~iiae.zsbir.image_pipeline`,
:mod:`~iiae.zsbir.feature_extractor`), :mod:`~iiae.zsbir.baseline` (the supervised embedding),
:mod:`~iiae.zsbir.sampler` (class-level pairs), :mod:`~iiae.zsbir.metrics` (mAP@all, P@K, mAP@K),
:mod:`~iiae.zsbir.train` (runs: the ``mlp`` architecture of :class:`iiae.IIAE`, trained by the engine), :mod:`~iiae.zsbir.report`,
:mod:`~iiae.zsbir.retrieve` (a query image against a folder of images).
Configs: ``zs_sketchy`` (25 unseen classes of SEM-PCYC), ``zs_sketchy_yelamarthi`` (21 of Yelamarthi et al.).
"""
