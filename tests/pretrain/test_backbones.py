import pytest
import torch
from torch import nn

from pretrain.ground.backbones import build_backbone, resolve_spec
from pretrain.ground.errors import ConfigError


def test_torchvision_resnet_with_small_stem() -> None:
    spec = resolve_spec("resnet18", None, 32)
    assert (spec.source, spec.small_stem) == ("torchvision", True)
    model, dim = build_backbone(spec, 32)
    assert dim == 512
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    model.eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_small_stem_keeps_more_spatial_detail() -> None:
    small, _ = build_backbone(resolve_spec("resnet18", True, 32), 32)
    plain, _ = build_backbone(resolve_spec("resnet18", False, 32), 32)
    x = torch.zeros(1, 3, 32, 32)
    stem = lambda m: m.maxpool(m.relu(m.bn1(m.conv1(x))))  # noqa: E731
    assert stem(small).shape[-1] == 32 and stem(plain).shape[-1] == 8


def test_timm_model_feature_dim_is_discovered() -> None:
    import timm

    spec = resolve_spec("test_resnet", None, 32)
    assert spec.source == "timm" and spec.small_stem  # deep stem: first conv stride set to 1
    model, dim = build_backbone(spec, 32)
    assert dim == timm.create_model("test_resnet", num_classes=0).num_features
    assert next(m for m in model.conv1.modules() if isinstance(m, nn.Conv2d)).stride == (1, 1)


def test_vit_has_no_small_stem_automatically_and_refuses_it_explicitly() -> None:
    spec = resolve_spec("test_vit", None, 32)
    assert not spec.small_stem
    _, dim = build_backbone(spec, 32)
    assert dim > 0
    with pytest.raises(ConfigError, match="ResNet-style"):
        build_backbone(resolve_spec("test_vit", True, 32), 32)


def test_large_inputs_keep_the_standard_stem() -> None:
    assert not resolve_spec("resnet18", None, 224).small_stem


def test_explicit_library_prefix() -> None:
    assert resolve_spec("timm/resnet18", None, 224).source == "timm"
    assert resolve_spec("torchvision/resnet34", None, 224).source == "torchvision"
    with pytest.raises(ConfigError, match="prefix"):
        resolve_spec("keras/resnet18", None, 224)


def test_unknown_backbone_suggests_names() -> None:
    with pytest.raises(ConfigError, match="did you mean"):
        resolve_spec("resnet_18", None, 224)
    with pytest.raises(ConfigError, match="torchvision backbone must be one of"):
        build_backbone(resolve_spec("torchvision/vit_b_16", False, 224), 224)
