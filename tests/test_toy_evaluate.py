"""Tests of the toy model's quality gate: the classifier and the sampling loop."""

import numpy as np
import pytest
import torch

from denoisefeat.toy.diffshapes import NUM_CONDITIONS, generate
from denoisefeat.toy.evaluate import (
    DEFAULT_CLASSIFIER_DIR,
    ClassifierConfig,
    classifier_accuracy,
    evaluate_samples,
    load_classifier,
    sample_toy,
    save_classifier,
    train_classifier,
)
from denoisefeat.toy.train import TrainConfig, build_sampling_scheduler, build_unet


@pytest.fixture(scope="module")
def cached_classifier():
    if not (DEFAULT_CLASSIFIER_DIR / "model.safetensors").exists():
        pytest.skip("the cached gate classifier has not been trained yet (python -m denoisefeat.toy.evaluate)")
    return load_classifier()


def test_cached_classifier_is_accurate_on_held_out_images(cached_classifier):
    scores = classifier_accuracy(cached_classifier, n=1500, seed=123_456_789)
    assert scores["shape"] >= 0.98 and scores["color"] >= 0.98 and scores["texture"] >= 0.98, scores


def test_cached_classifier_is_robust_to_mild_noise(cached_classifier):
    batch = generate(500, seed=987_654, size=cached_classifier.config.size)
    rng = np.random.default_rng(0)
    noisy = np.clip(batch.images + rng.normal(0, 0.03, batch.images.shape), 0, 1).astype(np.float32)
    scores = evaluate_samples(noisy, batch.label, cached_classifier)
    assert min(scores["shape"], scores["color"], scores["texture"]) >= 0.95, scores


def test_evaluate_samples_scores_each_head():
    batch = generate(40, seed=1)
    classifier = train_classifier(seed=0, config=ClassifierConfig(iterations=2, batch_size=8, width=4))
    predicted = classifier.predict(batch.images)
    assert set(predicted) == {"shape", "color", "texture", "label"}
    scores = evaluate_samples(batch.images, batch.label, classifier)
    assert set(scores) == {"shape", "color", "texture", "joint"}
    assert scores["shape"] == pytest.approx(np.mean(predicted["shape"] == batch.shape))
    with pytest.raises(ValueError):
        evaluate_samples(batch.images, batch.label[:3], classifier)


def test_save_and_load_round_trip(tmp_path):
    classifier = train_classifier(seed=0, config=ClassifierConfig(iterations=1, batch_size=4, width=4))
    loaded = load_classifier(save_classifier(classifier, tmp_path / "clf"))
    images = generate(8, seed=2).images
    np.testing.assert_array_equal(loaded.predict(images)["label"], classifier.predict(images)["label"])


def test_sample_toy_runs_a_guided_ddim_loop():
    config = TrainConfig(size=16, block_out_channels=(8, 16), layers_per_block=1)
    torch.manual_seed(0)
    unet = build_unet(config).eval()
    scheduler = build_sampling_scheduler(config)
    labels = np.array([0, 5, NUM_CONDITIONS - 1])
    images = sample_toy(unet, scheduler, labels, steps=4, guidance_scale=2.0, seed=3)
    again = sample_toy(unet, scheduler, labels, steps=4, guidance_scale=2.0, seed=3)
    assert images.shape == (3, 3, 16, 16) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(images, again)
    unguided = sample_toy(unet, scheduler, labels, steps=4, guidance_scale=1.0, seed=3)
    assert not np.array_equal(images, unguided)


def test_sample_toy_stochastic_ddim_is_seeded():
    config = TrainConfig(size=16, block_out_channels=(8, 16), layers_per_block=1)
    torch.manual_seed(0)
    unet = build_unet(config).eval()
    scheduler = build_sampling_scheduler(config)
    labels = np.array([1, 2])
    first = sample_toy(unet, scheduler, labels, steps=3, eta=1.0, seed=5)
    np.testing.assert_array_equal(first, sample_toy(unet, scheduler, labels, steps=3, eta=1.0, seed=5))
    assert not np.array_equal(first, sample_toy(unet, scheduler, labels, steps=3, eta=0.0, seed=5))


def _constant_classifier(shape: int, color: int, texture: int):
    """A classifier whose heads ignore the image: every image reads as (shape, color, texture)."""
    from denoisefeat.toy.evaluate import DiffShapesClassifier

    classifier = DiffShapesClassifier(ClassifierConfig(width=4)).eval()
    with torch.no_grad():
        for name, index in (("shape", shape), ("color", color), ("texture", texture)):
            head = classifier.heads[name]
            head.weight.zero_()
            head.bias.zero_()
            head.bias[index] = 1.0
    return classifier


def test_confusion_matrices_count_condition_against_reading():
    from denoisefeat.toy.diffshapes import condition_label
    from denoisefeat.toy.evaluate import confusion_matrices

    labels = np.array([condition_label("circle", "red", "solid"), condition_label("star", "blue", "stripes"),
                       condition_label("star", "red", "stripes"), condition_label("cross", "green", "dots")])
    images = generate(4, seed=3, labels=labels).images
    matrices = confusion_matrices(images, labels, _constant_classifier(shape=1, color=0, texture=2))
    expected_texture = np.zeros((4, 4), dtype=np.int64)
    expected_texture[0, 2], expected_texture[1, 2], expected_texture[3, 2] = 1, 2, 1  # solid, stripes x2, dots
    np.testing.assert_array_equal(matrices["texture"], expected_texture)
    expected_shape = np.zeros((5, 5), dtype=np.int64)
    expected_shape[0, 1], expected_shape[3, 1], expected_shape[4, 1] = 1, 2, 1  # circle, star x2, cross
    np.testing.assert_array_equal(matrices["shape"], expected_shape)
    assert matrices["color"].shape == (6, 6) and matrices["color"][:, 0].sum() == 4
    # The trace over n is evaluate_samples' accuracy: red is read right twice.
    scores = evaluate_samples(images, labels, _constant_classifier(shape=1, color=0, texture=2))
    assert np.trace(matrices["color"]) / 4 == scores["color"] == 0.5
    with pytest.raises(ValueError, match="labels"):
        confusion_matrices(images, labels[:2], _constant_classifier(shape=0, color=0, texture=0))
