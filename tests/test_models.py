import pytest
import torch

from ddpbench.models import MODELS, build_model, count_parameters


def test_simple_cnn_matches_the_study():
    model = build_model("simple_cnn")
    assert count_parameters(model) == 1_147_914
    assert model(torch.zeros(4, 3, 32, 32)).shape == (4, 10)


def test_resnet18_is_adapted_to_32x32():
    model = build_model("resnet18")
    assert 11_000_000 < count_parameters(model) < 11_300_000
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    model.eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="simple_cnn"):
        build_model("vgg")
    assert {"simple_cnn", "resnet18"} <= set(MODELS)
