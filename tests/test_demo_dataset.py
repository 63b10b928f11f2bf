"""Demo data: the shipped scikit-learn digits, the split, the style transforms."""
import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.datasets import load_digits

from lcm_lora.demo import dataset


def test_native_resolution_is_the_raw_sklearn_data():
    images, labels = dataset.load_digit_images(resolution=8)
    raw = load_digits()
    assert images.shape == (1797, 1, 8, 8)
    np.testing.assert_allclose(images[:, 0].numpy(), raw.images / 8.0 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(labels.numpy(), raw.target)


def test_upsampled_images_keep_range_and_mean():
    x8, _ = dataset.load_digit_images(8)
    x16, _ = dataset.load_digit_images(16)
    assert x16.shape == (1797, 1, 16, 16)
    assert x16.min() >= -1 and x16.max() <= 1
    # bilinear 2x upsampling keeps the mean of each image up to border effects
    assert (x16.mean((1, 2, 3)) - x8.mean((1, 2, 3))).abs().max() < 0.05


def test_split_is_disjoint_stratified_and_seeded():
    _, labels = dataset.load_digit_images(8)
    s = dataset.split_indices(labels, seed=0)
    parts = [set(s.train), set(s.classifier), set(s.reference)]
    assert sum(map(len, parts)) == 1797 and len(set().union(*parts)) == 1797
    for p, frac in zip((s.train, s.classifier, s.reference), dataset.SPLIT_FRACTIONS):
        counts = np.bincount(labels.numpy()[p], minlength=10)
        expected = np.bincount(labels.numpy(), minlength=10) * frac
        assert np.abs(counts - expected).max() <= 1.5
    again = dataset.split_indices(labels, seed=0)
    np.testing.assert_array_equal(s.reference, again.reference)
    assert not np.array_equal(s.reference, dataset.split_indices(labels, seed=1).reference)


def test_bold_style_is_a_plus_shaped_grey_dilation():
    x, _ = dataset.load_digit_images(16)
    bold = dataset.apply_style(x[:20], "bold")
    plus = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    for i in range(20):
        ref = ndimage.grey_dilation(x[i, 0].numpy(), footprint=plus, mode="constant", cval=-1.0)
        np.testing.assert_allclose(bold[i, 0].numpy(), ref, atol=1e-7)
    assert torch.equal(dataset.apply_style(x[:3], "inverted"), -x[:3])
    assert torch.equal(dataset.apply_style(x[:3], "plain"), x[:3])
    with pytest.raises(ValueError):
        dataset.apply_style(x[:1], "wavy")


def test_prompts_and_balanced_labels():
    assert dataset.prompt_for(7) == "a handwritten digit 7"
    lab = dataset.balanced_labels(25, seed=3)
    assert sorted(np.bincount(lab.numpy(), minlength=10).tolist()) == [2] * 5 + [3] * 5
    assert torch.equal(lab, dataset.balanced_labels(25, seed=3))
