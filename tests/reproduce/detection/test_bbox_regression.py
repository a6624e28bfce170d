"""Bounding-box regression: matching, the ridge solve, recovering a known linear deformation, identity fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from sppnet.reproduce.detection.bbox_regression import (
    BBoxRegressionConfig,
    BBoxRegressor,
    match_ground_truth,
    ridge,
)

DIM = 12


def deformed(n: int, seed: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pool5, proposals, gt, true deltas): proposals moved by deltas that are a known linear map of pool5."""
    rng = np.random.default_rng(seed)
    pool5 = rng.random((n, DIM))
    deltas = pool5 @ weights[:-1] + weights[-1]
    x1, y1 = rng.uniform(0, 200, n), rng.uniform(0, 200, n)
    w, h = rng.uniform(40, 160, n), rng.uniform(40, 160, n)
    proposals = np.stack([x1, y1, x1 + w - 1, y1 + h - 1], axis=1)
    # The R-CNN parametrisation written out: centre moves by (dx w, dy h), sides scale by exp(dw), exp(dh).
    cx, cy = x1 + w / 2 + deltas[:, 0] * w, y1 + h / 2 + deltas[:, 1] * h
    gw, gh = w * np.exp(deltas[:, 2]), h * np.exp(deltas[:, 3])
    gt = np.stack([cx - gw / 2, cy - gh / 2, cx + gw / 2 - 1, cy + gh / 2 - 1], axis=1)
    return pool5, proposals, gt, deltas


@pytest.fixture(scope="module")
def true_weights() -> np.ndarray:
    """(DIM + 1, 4): a small linear map (last row the offset) so every proposal keeps IoU > 0.5 with its gt."""
    return np.random.default_rng(42).normal(0, 0.02, (DIM + 1, 4))


def test_match_ground_truth_on_hand_made_boxes():
    gt = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], dtype=np.float64)
    proposals = np.array([[4, 0, 13, 9], [0, 0, 9, 4], [50, 50, 60, 60]], dtype=np.float64)
    matched, labels, iou = match_ground_truth(proposals, gt, [7, 4])
    # [4, 0, 13, 9]: 60 px with the first box (IoU 60 / 140), 90 px with the second (IoU 90 / 110).
    np.testing.assert_array_equal(matched[:2], gt[[1, 0]])
    assert labels.tolist() == [4, 7, 0]
    np.testing.assert_allclose(iou, [90 / 110, 50 / 100, 0.0])
    _, labels, iou = match_ground_truth(proposals, np.zeros((0, 4)), [])
    assert labels.tolist() == [0, 0, 0] and iou.tolist() == [0, 0, 0]


@pytest.mark.parametrize("rows", [40, 7])
def test_ridge_matches_the_augmented_least_squares_problem(rows):
    rng = np.random.default_rng(rows)
    x, y, lam = rng.normal(size=(rows, 10)), rng.normal(size=(rows, 4)), 3.0
    # min ||x w - y||^2 + lam ||w||^2 is least squares on [x; sqrt(lam) I] against [y; 0] (primal and dual forms).
    augmented = np.concatenate([x, np.sqrt(lam) * np.eye(10)])
    expected = np.linalg.lstsq(augmented, np.concatenate([y, np.zeros((10, 4))]), rcond=None)[0]
    np.testing.assert_allclose(ridge(x, y, lam), expected, rtol=1e-9, atol=1e-12)


def test_regression_recovers_a_known_linear_deformation(true_weights):
    pool5, proposals, gt, _ = deformed(400, 0, true_weights)
    labels = np.full(400, 2)
    regressor = BBoxRegressor(3, BBoxRegressionConfig(ridge_lambda=1e-8)).fit(pool5, proposals, gt, labels)
    test_pool5, test_proposals, test_gt, _ = deformed(50, 1, true_weights)
    predicted = regressor.predict(test_pool5, test_proposals, np.full(50, 2))
    np.testing.assert_allclose(predicted, test_gt, atol=1e-5)
    assert np.abs(test_proposals - test_gt).max() > 1.0  # the deformation is not trivially small


def test_paper_lambda_matches_sklearn_ridge_on_standardised_targets(true_weights):
    pool5, proposals, gt, deltas = deformed(300, 2, true_weights)
    regressor = BBoxRegressor(1).fit(pool5, proposals, gt, np.ones(300, dtype=np.int64))
    assert regressor.config.ridge_lambda == 4000.0
    mean, std = deltas.mean(axis=0), deltas.std(axis=0)
    # Ridge on [pool5, 1] (R-CNN's bias feature, regularised with the rest), no separate intercept.
    with_ones = np.concatenate([pool5, np.ones((300, 1))], axis=1)
    sk = Ridge(alpha=4000.0, fit_intercept=False).fit(with_ones, (deltas - mean) / std)
    test_pool5, _, _, _ = deformed(20, 3, true_weights)
    expected = sk.predict(np.concatenate([test_pool5, np.ones((20, 1))], axis=1)) * std + mean
    np.testing.assert_allclose(regressor.predict_deltas(test_pool5, np.ones(20, dtype=np.int64)), expected, atol=1e-9)
    np.testing.assert_allclose(regressor.target_mean[1], mean, atol=1e-12)
    np.testing.assert_allclose(regressor.target_std[1], std, atol=1e-12)


def test_targets_round_trip_through_whitening_to_the_training_boxes(true_weights):
    # More feature dims than samples and almost no ridge: the fit interpolates, so predict returns the gt boxes.
    rng = np.random.default_rng(5)
    _, proposals, gt, _ = deformed(10, 4, true_weights)
    pool5 = rng.normal(size=(10, 30))
    regressor = BBoxRegressor(1, BBoxRegressionConfig(ridge_lambda=1e-10)).fit(pool5, proposals, gt, np.ones(10))
    np.testing.assert_allclose(regressor.predict(pool5, proposals, np.ones(10)), gt, atol=1e-4)


def test_only_labelled_proposals_with_iou_above_half_train(true_weights):
    pool5, proposals, gt, _ = deformed(200, 6, true_weights)
    reference = BBoxRegressor(2).fit(pool5, proposals, gt, np.ones(200, dtype=np.int64))
    # Extra rows, both ignored: class 1 whose "gt" is the top third of the proposal (IoU 1/3), and class 0 rows.
    third = proposals[:30].copy()
    third[:, 3] = third[:, 1] + (proposals[:30, 3] - proposals[:30, 1] + 1) / 3 - 1
    junk = np.random.default_rng(7).random((60, DIM)) * 50
    regressor = BBoxRegressor(2).fit(
        np.concatenate([pool5, junk]),
        np.concatenate([proposals, proposals[:30], proposals[:30]]),
        np.concatenate([gt, third, gt[:30] + 5]),
        np.concatenate([np.ones(200), np.ones(30), np.zeros(30)]).astype(np.int64),
    )
    assert regressor.num_samples.tolist() == [0, 200, 0]
    np.testing.assert_allclose(regressor.weights[1], reference.weights[1], rtol=1e-10, atol=1e-12)


def test_classes_without_samples_and_background_leave_boxes_unchanged(true_weights):
    pool5, proposals, gt, _ = deformed(100, 8, true_weights)
    regressor = BBoxRegressor(3).fit(pool5, proposals, gt, np.full(100, 2))
    assert sorted(regressor.weights) == [2]
    labels = np.array([1, 3, 0, 2] * 25)
    predicted = regressor.predict(pool5, proposals, labels)
    untouched = labels != 2
    np.testing.assert_array_equal(predicted[untouched], proposals[untouched])
    assert not np.allclose(predicted[~untouched], proposals[~untouched])
    with pytest.raises(ValueError, match="labels"):
        regressor.predict(pool5, proposals, np.full(100, 4))
