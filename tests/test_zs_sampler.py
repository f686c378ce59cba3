"""Class-level pairing: one (sketch, photo) pair per class per batch, the two drawn independently."""

from collections import Counter

import numpy as np
import torch

from iiae.zsbir.sampler import ClassPairBatches, ClassPairDataModule, ClassPairSampler

SKETCH_CLASSES = np.array(["cat", "dog", "cat", "cow", "dog", "cat", "cow"])
PHOTO_CLASSES = np.array(["dog", "cat", "cow", "cat", "cat", "dog", "cow", "dog"])


def test_one_pair_per_class_with_matching_classes():
    sampler = ClassPairSampler(SKETCH_CLASSES, PHOTO_CLASSES, seed=0)
    assert sampler.batch_size == 3 and sampler.classes == ["cat", "cow", "dog"]
    for index in range(50):
        sketches, photos = sampler.batch(0, index)
        assert SKETCH_CLASSES[sketches].tolist() == ["cat", "cow", "dog"]
        assert PHOTO_CLASSES[photos].tolist() == ["cat", "cow", "dog"]


def test_sketch_and_photo_are_drawn_independently_and_uniformly():
    sampler = ClassPairSampler(SKETCH_CLASSES, PHOTO_CLASSES, seed=1)
    draws = 4500
    combos = Counter()
    for index in range(draws):
        sketches, photos = sampler.batch(index // 100, index % 100)
        combos[(int(sketches[0]), int(photos[0]))] += 1  # class "cat": 3 sketches x 3 photos
    assert set(combos) == {(s, p) for s in (0, 2, 5) for p in (1, 3, 4)}  # every combination occurs
    for count in combos.values():  # each ~ 500 (binomial sd ~ 21)
        assert abs(count - draws / 9) < 120


def test_batches_are_seeded_new_each_epoch_and_a_function_of_their_position():
    features_s = np.arange(len(SKETCH_CLASSES), dtype=np.float32)[:, None].repeat(2, 1)
    features_p = np.arange(len(PHOTO_CLASSES), dtype=np.float32)[:, None].repeat(2, 1)
    first = ClassPairBatches(features_s, SKETCH_CLASSES, features_p, PHOTO_CLASSES, batches_per_epoch=4, seed=3)
    second = ClassPairBatches(features_s, SKETCH_CLASSES, features_p, PHOTO_CLASSES, batches_per_epoch=4, seed=3)
    epoch_a, epoch_b = first.epoch(0), second.epoch(0)
    assert len(first) == 4 and len(epoch_a) == 4
    assert epoch_a[0][0].shape == (3, 2) and epoch_a[0][1].dtype == torch.float32
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch_a, epoch_b))
    again = first.epoch(1)  # the next epoch draws new pairs
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(epoch_a, again))
    other_seed = ClassPairBatches(features_s, SKETCH_CLASSES, features_p, PHOTO_CLASSES, batches_per_epoch=4, seed=4)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(epoch_a, other_seed.epoch(0)))
    assert torch.equal(first[1, 2][0], again[2][0])  # batch (epoch 1, index 2) whenever and however it is asked for


def test_the_loader_resumes_mid_epoch_with_the_batches_an_uninterrupted_run_sees():
    features_s = np.arange(len(SKETCH_CLASSES), dtype=np.float32)[:, None]
    features_p = np.arange(len(PHOTO_CLASSES), dtype=np.float32)[:, None]
    batches = ClassPairBatches(features_s, SKETCH_CLASSES, features_p, PHOTO_CLASSES, batches_per_epoch=6, seed=1)
    loader = ClassPairDataModule(batches, seed=1).train_dataloader()
    loader.sampler.set_epoch(2)
    whole = list(loader)
    assert len(whole) == 6 and whole[0][0].shape == (3, 1)  # one class-level batch per step, not a batch of them
    interrupted = ClassPairDataModule(batches, seed=1).train_dataloader()
    interrupted.sampler.set_epoch(2)
    first_part = [batch for _, batch in zip(range(4), interrupted)]
    resumed = ClassPairDataModule(batches, seed=1).train_dataloader()
    resumed.load_state_dict(interrupted.state_dict())
    resumed.sampler.set_epoch(2)
    rest = list(resumed)
    assert len(first_part) == 4 and len(rest) == 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first_part + rest, whole))
