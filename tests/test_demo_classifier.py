"""The measuring classifier: learns real digits from its own split, round-trips through safetensors."""
import pytest
import torch

from lcm_lora.demo import classifier as C
from lcm_lora.demo.dataset import load_digit_images, split_indices
from lcm_lora.lcm_core.errors import LcmLoraError


@pytest.fixture(scope="module")
def data():
    x, y = load_digit_images(16)
    return x, y, split_indices(y, seed=0)


def test_classifier_generalises_to_held_out_digits(data):
    x, y, s = data
    torch.set_num_threads(1)
    model = C.train_classifier(x[s.classifier], y[s.classifier], 10, C.ClassifierTraining(epochs=15))
    logits, feats = C.predict(model, x[s.reference])
    acc = (logits.argmax(1) == y[s.reference]).float().mean().item()
    assert acc > 0.9  # chance is 0.1; a logistic regression on raw pixels gets ~0.95
    assert feats.shape == (len(s.reference), C.FEATURE_DIM) and (feats >= 0).all()


def test_shift_augmentation_is_a_translation():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(9, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    out = C._augment(x, g)
    padded = torch.nn.functional.pad(x[:1], (1, 1, 1, 1), value=-1.0)[0, 0]
    crops = {tuple(padded[i:i + 4, j:j + 4].flatten().tolist()) for i in range(3) for j in range(3)}
    for k in range(9):
        assert tuple(out[k, 0].flatten().tolist()) in crops


def test_save_load_round_trip_and_bad_file(tmp_path):
    model = C.SmallCnn(num_classes=2, resolution=16)
    path = tmp_path / "c.safetensors"
    C.save_classifier(model, path)
    back = C.load_classifier(path)
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(back(x), model.eval()(x))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(LcmLoraError, match="bad.safetensors"):
        C.load_classifier(bad)
