"""Per-class linear SVMs on fc7 features: norm-20 scaling, windows from boxes, hard-negative mining bookkeeping."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from sppnet.reproduce.detection.svm import ImageWindows, SVMConfig, normalise_features, train_svms

CLASSES, DIM, PROPOSALS = 3, 48, 60
CONFIG = SVMConfig(initial_negatives=40)


def synthetic_image(rng: np.random.Generator) -> ImageWindows:
    """Two gt windows (a strong block of 8 dims per class), 6 proposals half on a gt (IoU 0.5), 54 background."""
    gt = rng.integers(1, CLASSES + 1, 2)
    features = np.abs(rng.normal(size=(2 + PROPOSALS, DIM))).astype(np.float32)
    overlaps = np.zeros((2 + PROPOSALS, CLASSES))
    for j, c in enumerate(gt):
        features[j, (c - 1) * 8 : c * 8] += 4.0
        overlaps[j, c - 1] = 1.0
    for j in range(2, 8):
        c = gt[j % 2]
        features[j, (c - 1) * 8 : c * 8] += 2.0
        overlaps[j, c - 1] = 0.5
    gt_classes = np.concatenate([gt, np.zeros(PROPOSALS, dtype=np.int64)])
    return ImageWindows(features, gt_classes, overlaps)


@pytest.fixture(scope="module")
def train_images() -> list[ImageWindows]:
    rng = np.random.default_rng(0)
    return [synthetic_image(rng) for _ in range(30)]


def paper_svm() -> LinearSVC:
    # liblinear -s 3 (L2-regularised L1-hinge, dual) -c 1e-3 -w1 2 -B 10, as R-CNN calls it.
    return LinearSVC(
        C=1e-3,
        loss="hinge",
        dual=True,
        class_weight={1: 2.0, -1: 1.0},
        intercept_scaling=10,
        tol=1e-4,
        max_iter=10_000,
        random_state=0,
    )


def test_normalise_features_gives_mean_norm_20_and_reuses_the_training_scale():
    rng = np.random.default_rng(1)
    train = rng.random((50, 16)).astype(np.float32) * 7
    scaled, k = normalise_features(train)
    assert k == pytest.approx(20 / np.sqrt((train.astype(np.float64) ** 2).sum(axis=1)).mean())
    assert np.linalg.norm(scaled, axis=1).mean() == pytest.approx(20, rel=1e-6)
    assert scaled.dtype == np.float32
    test = rng.random((5, 16)).astype(np.float32)
    np.testing.assert_allclose(normalise_features(test, k)[0], test * k, rtol=1e-6)
    with pytest.raises(ValueError, match="non-zero"):
        normalise_features(np.zeros((3, 4), dtype=np.float32))


def test_image_windows_from_boxes_puts_gt_first_and_takes_the_best_iou_per_class():
    gt = np.array([[0, 0, 9, 9], [20, 20, 29, 29], [0, 0, 9, 4]], dtype=np.float64)
    labels = [2, 2, 1]
    proposals = np.array([[0, 0, 9, 3], [20, 20, 29, 24], [50, 50, 60, 60]], dtype=np.float64)
    windows = ImageWindows.from_boxes(np.ones((6, 4), np.float32), proposals, gt, labels, num_classes=3)
    assert windows.gt_classes.tolist() == [2, 2, 1, 0, 0, 0]
    # Class 1 is the half box [0, 0, 9, 4] (area 50); class 2 the two 10x10 boxes; class 3 is absent.
    expected = [
        [50 / 100, 1.0, 0.0],  # the first class 2 gt box contains the class 1 box
        [0.0, 1.0, 0.0],
        [1.0, 0.5, 0.0],
        [40 / 50, 40 / 100, 0.0],  # [0, 0, 9, 3]: 40 px inside both the class 1 box and the first class 2 box
        [0.0, 50 / 100, 0.0],
        [0.0, 0.0, 0.0],
    ]
    np.testing.assert_allclose(windows.overlaps, expected)
    with pytest.raises(ValueError, match="with_ground_truth"):
        ImageWindows.from_boxes(np.ones((3, 4), np.float32), proposals, gt, labels, num_classes=3)


def test_svms_classify_separable_windows(train_images):
    bank = train_svms(train_images, CLASSES, CONFIG)
    assert bank.trained.all()
    assert bank.weights.shape == (DIM, CLASSES)
    rng = np.random.default_rng(9)
    for image in (synthetic_image(rng) for _ in range(10)):
        scores = bank.score(image.features)
        assert scores.shape == (2 + PROPOSALS, CLASSES)
        np.testing.assert_array_equal(scores[:2].argmax(axis=1) + 1, image.gt_classes[:2])
        assert (scores[:2].max(axis=1) > 0).all()
        assert (scores[8:] < 0).all()  # pure background windows


def test_one_pass_of_hard_negative_mining_adds_the_negatives_inside_the_margin(train_images):
    bank = train_svms(train_images, CLASSES, CONFIG)
    k = np.float32(bank.scale)
    mean_norm = np.mean([np.linalg.norm(im.features.astype(np.float64), axis=1).mean() for im in train_images])
    assert bank.scale == pytest.approx(20 / mean_norm, rel=1e-5)  # every image has the same number of windows
    for c in range(1, CLASSES + 1):
        stats = bank.stats[c - 1]
        negatives = {(i, w) for i, im in enumerate(train_images) for w in np.flatnonzero(im.overlaps[:, c - 1] < 0.3)}
        positives = np.concatenate([im.features[im.gt_classes == c] for im in train_images]) * k
        assert stats.positives == len(positives)
        assert stats.negatives_seen == len(negatives)
        initial = [tuple(row) for row in stats.initial.tolist()]
        assert len(initial) == len(set(initial)) == CONFIG.initial_negatives
        assert set(initial) <= negatives
        # Round 1 retrained here on the same positives and initial cache; every negative scored with it.
        first = paper_svm().fit(*training_set(train_images, positives, initial, k))
        hard = {
            (i, int(w))
            for i, w in negatives
            if first.decision_function(train_images[i].features[w : w + 1] * k)[0] > -1.0
        }
        added = [tuple(row) for row in stats.added.tolist()]
        assert len(added) == len(set(added))
        assert set(added) == hard - set(initial)
        assert len(added) > 0
        assert stats.cache_size == len(initial) + len(added)
        # Round 2: positives + initial + added, in that order.
        final = paper_svm().fit(*training_set(train_images, positives, initial + added, k))
        np.testing.assert_allclose(bank.weights[:, c - 1], final.coef_[0], rtol=1e-6, atol=1e-9)
        assert bank.bias[c - 1] == pytest.approx(final.intercept_[0], rel=1e-6, abs=1e-9)


def training_set(
    images: list[ImageWindows], positives: np.ndarray, negatives: list[tuple[int, int]], k: np.float32
) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([positives, np.stack([images[i].features[w] * k for i, w in negatives])])
    return x.astype(np.float64), np.concatenate([np.ones(len(positives)), -np.ones(len(negatives))])


def test_a_cache_that_already_holds_every_negative_gains_nothing(train_images):
    bank = train_svms(train_images[:5], CLASSES, replace(CONFIG, initial_negatives=10_000))
    for stats in bank.stats:
        assert len(stats.initial) == stats.negatives_seen
        assert len(stats.added) == 0
        assert stats.cache_size == stats.negatives_seen


def test_the_initial_subset_depends_on_the_seed_only(train_images):
    first = train_svms(train_images, CLASSES, CONFIG).stats[0].initial
    again = train_svms(train_images, CLASSES, CONFIG).stats[0].initial
    other = train_svms(train_images, CLASSES, replace(CONFIG, seed=1)).stats[0].initial
    np.testing.assert_array_equal(first, again)
    assert {tuple(r) for r in first.tolist()} != {tuple(r) for r in other.tolist()}


def test_a_class_without_positives_is_untrained_and_never_fires(train_images):
    images = [replace(im, overlaps=np.pad(im.overlaps, ((0, 0), (0, 1)))) for im in train_images[:10]]
    bank = train_svms(images, CLASSES + 1, CONFIG)
    assert bank.trained.tolist() == [True, True, True, False]
    assert bank.stats[CLASSES].positives == 0
    assert bank.stats[CLASSES].cache_size == 0
    scores = bank.score(images[0].features)
    assert np.isneginf(scores[:, CLASSES]).all()
    assert np.isfinite(scores[:, :CLASSES]).all()


def test_paper_defaults():
    config = SVMConfig()
    assert (config.C, config.positive_weight, config.bias_multiplier) == (1e-3, 2.0, 10.0)
    assert (config.negative_iou, config.hard_margin, config.feature_norm) == (0.3, -1.0, 20.0)
