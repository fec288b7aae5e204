"""The digits data set, DigitsNet, and the fit / accuracy helpers of surgeon.models.digits."""

from __future__ import annotations

import builtins
import copy
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
import surgeon.digits as digits
from surgeon.digits import DigitsData, accuracy, fit, load_digits_split
from surgeon.errors import SurgeonInputError
from surgeon.models import ZOO, create
from surgeon.models.digits import digits_cnn
from tests.conftest import DIGITS_EPOCHS

pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")

N_TRAIN, N_TEST = 1437, 360


@pytest.fixture(scope="module")
def data8() -> DigitsData:
    """The same split at the native 8x8 resolution."""
    return load_digits_split(size=8)


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------


def test_split_shapes_sizes_and_dtypes(digits_trained) -> None:
    _, data = digits_trained
    assert data.x_train.shape == (N_TRAIN, 1, 16, 16)
    assert data.x_test.shape == (N_TEST, 1, 16, 16)
    assert data.y_train.shape == (N_TRAIN,)
    assert data.y_test.shape == (N_TEST,)
    assert data.x_train.dtype == data.x_test.dtype == torch.float32
    assert data.y_train.dtype == data.y_test.dtype == torch.int64
    assert set(data.y_train.tolist()) == set(data.y_test.tolist()) == set(range(10))
    with pytest.raises(AttributeError):
        data.x_train = data.x_test  # frozen


def test_split_is_stratified(digits_trained) -> None:
    _, data = digits_trained
    train = torch.bincount(data.y_train, minlength=10)
    test = torch.bincount(data.y_test, minlength=10)
    total = train + test
    assert int(total.sum()) == 1797
    # every class is split 80 / 20 to within one image
    assert ((test - 0.2 * total).abs() <= 1).all(), (test.tolist(), total.tolist())


def test_standardised_with_train_statistics(digits_trained) -> None:
    _, data = digits_trained
    torch.testing.assert_close(data.x_train.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.x_train.std(), torch.tensor(1.0), atol=1e-5, rtol=0)
    # the test split uses the train statistics, so its own are close but not exactly 0 / 1
    assert abs(data.x_test.mean().item()) < 0.1
    assert data.x_test.mean().item() != pytest.approx(0.0, abs=1e-5)
    # undoing the standardisation gives pixels in [0, 1]
    for x in (data.x_train, data.x_test):
        raw = x * data.std + data.mean
        assert raw.min().item() >= -1e-5 and raw.max().item() <= 1 + 1e-5


def test_native_size_is_sixteenths_and_16x16_is_its_bilinear_upsampling(
    digits_trained, data8: DigitsData
) -> None:
    _, data16 = digits_trained
    assert data8.x_train.shape == (N_TRAIN, 1, 8, 8)
    torch.testing.assert_close(data8.y_train, data16.y_train)  # same seeded split
    raw8 = data8.x_train * data8.std + data8.mean
    torch.testing.assert_close(raw8 * 16, (raw8 * 16).round(), atol=1e-4, rtol=0)
    assert raw8.max().item() == pytest.approx(1.0, abs=1e-5)
    up = F.interpolate(raw8, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(data16.x_train, (up - data16.mean) / data16.std)


def test_split_is_seeded(digits_trained) -> None:
    _, data = digits_trained
    again = load_digits_split(seed=0)
    other = load_digits_split(seed=1)
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)
    assert not torch.equal(other.y_test, data.y_test)
    assert other.x_test.shape == (N_TEST, 1, 16, 16)


@pytest.mark.parametrize(
    "kwargs", [{"size": 0}, {"size": 16.0}, {"test_fraction": 0.0}, {"test_fraction": 1.0}]
)
def test_bad_split_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(SurgeonInputError, match=next(iter(kwargs))):
        load_digits_split(**kwargs)


def test_missing_sklearn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(SurgeonInputError, match=r"pip install 'surgeon\[data\]'") as info:
        load_digits_split()
    assert isinstance(info.value.__cause__, ImportError)


# ------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------


def test_digits_cnn_structure_and_zoo_entry() -> None:
    assert ZOO["digits_cnn"].input_shape == (1, 1, 16, 16)
    assert "242K" in ZOO["digits_cnn"].description
    model, x = create("digits_cnn")
    assert surgeon.count_params(model) == 241_898
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128]
    assert all(c.bias is None and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    with torch.no_grad():
        assert model(x.expand(3, -1, -1, -1)).shape == (3, 10)
    assert digits_cnn(num_classes=7, widths=(4, 8, 8, 16)).fc.weight.shape == (7, 16)


@pytest.mark.parametrize("widths", [(32, 64, 128), (32, 0, 128, 128), (32.0, 64, 128, 128)])
def test_digits_cnn_rejects_bad_widths(widths: tuple[object, ...]) -> None:
    with pytest.raises(SurgeonInputError, match="widths"):
        digits_cnn(widths=widths)


def test_trained_model_slims_and_recovers(digits_trained) -> None:
    """80% of every layer removed (>20x fewer MACs); two epochs of fine-tuning recover >= 95%."""
    model, data = digits_trained
    x = data.x_test[:1]
    slim = surgeon.slim(model, 0.8, x)
    widths = [m.out_channels for m in slim.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [7, 13, 26, 26]
    assert surgeon.count_macs(model, x) > 20 * surgeon.count_macs(slim, x)
    fit(slim, data, epochs=2, lr=1e-2)
    assert accuracy(slim, data.x_test, data.y_test) >= 95.0
    assert accuracy(model, data.x_test, data.y_test) >= 95.0  # the shared baseline is untouched


# ------------------------------------------------------------------------------------------
# fit / accuracy
# ------------------------------------------------------------------------------------------


def test_seeded_training_is_accurate_and_reproducible(digits_trained) -> None:
    baseline, data = digits_trained
    torch.manual_seed(0)
    model = digits_cnn()
    start = time.perf_counter()
    fit(model, data, epochs=DIGITS_EPOCHS, seed=0)
    seconds = time.perf_counter() - start
    acc = accuracy(model, data.x_test, data.y_test)
    print(f"digits_cnn, {DIGITS_EPOCHS} epochs: {acc:.2f}% test accuracy in {seconds:.1f} s")
    assert acc >= 95.0
    assert not model.training
    # the same seed and thread count give the same weights, bit for bit
    want = baseline.state_dict()
    assert model.state_dict().keys() == want.keys()
    for name, got in model.state_dict().items():
        assert torch.equal(got, want[name]), name


def test_fit_with_teacher_uses_distill_loss(
    digits_trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    baseline, data = digits_trained
    student, teacher = copy.deepcopy(baseline), copy.deepcopy(baseline)
    teacher.train()
    teacher_state = copy.deepcopy(teacher.state_dict())
    calls: list[tuple[float, float]] = []

    def spy(student_logits, teacher_logits, labels, T, alpha):
        assert not teacher_logits.requires_grad
        calls.append((T, alpha))
        return surgeon.distill_loss(student_logits, teacher_logits, labels, T, alpha)

    monkeypatch.setattr(digits, "distill_loss", spy)
    fit(student, data, epochs=0.5, teacher=teacher, T=3.0, alpha=1.0)
    steps_per_epoch = N_TRAIN // 64
    assert calls == [(3.0, 1.0)] * -(-steps_per_epoch // 2)  # half an epoch, rounded up
    assert accuracy(student, data.x_test, data.y_test) >= 95.0
    # the teacher ran in eval mode (its BN statistics did not move) and got its mode back
    assert teacher.training
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_state[name]), name
    # the student did learn something: its weights moved
    assert not torch.equal(student.fc.weight, baseline.fc.weight)


@pytest.mark.parametrize(
    "kwargs",
    [{"epochs": 0}, {"epochs": -1.0}, {"epochs": 1, "lr": 0.0}, {"epochs": 1, "batch_size": 0}],
)
def test_fit_rejects_bad_arguments(digits_trained, kwargs: dict[str, float]) -> None:
    _, data = digits_trained
    with pytest.raises(SurgeonInputError, match=list(kwargs)[-1]):
        fit(digits_cnn(), data, **kwargs)


class _Constant(nn.Module):
    """Always predicts ``label``; has one parameter so that ``accuracy`` can find its device."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(torch.full((x.shape[0],), self.label), 10).float() + self.dummy


def test_accuracy_counts_exactly_and_restores_mode(digits_trained) -> None:
    _, data = digits_trained
    model = _Constant(3).train()
    want = 100.0 * (data.y_test == 3).sum().item() / N_TEST
    assert accuracy(model, data.x_test, data.y_test, batch_size=7) == pytest.approx(want)
    assert model.training
    model.eval()
    accuracy(model, data.x_test, data.y_test)
    assert not model.training
