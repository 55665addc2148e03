import pytest
import torch

from cbda.train.model import DeepLabV3Plus, FrozenBatchNorm2d, ResNet, load_pretrained


def _bn(prefix):
    return [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def torchvision_resnet_keys(blocks=(3, 4, 23, 3), bottleneck=True):
    """The state-dict keys of torchvision's resnet (written out from its architecture)."""
    keys = ["conv1.weight"] + _bn("bn1")
    convs = (1, 2, 3) if bottleneck else (1, 2)
    for li, n in enumerate(blocks, 1):
        for b in range(n):
            p = f"layer{li}.{b}"
            for j in convs:
                keys += [f"{p}.conv{j}.weight"] + _bn(f"{p}.bn{j}")
            if b == 0 and (bottleneck or li > 1):
                keys += [f"{p}.downsample.0.weight"] + _bn(f"{p}.downsample.1")
    return keys + ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("arch,blocks,bottleneck,params", [
    ("resnet101", (3, 4, 23, 3), True, 44_549_160),
    ("resnet50", (3, 4, 6, 3), True, 25_557_032),
    ("resnet18", (2, 2, 2, 2), False, 11_689_512),
])
def test_backbone_matches_torchvision_names_and_sizes(arch, blocks, bottleneck, params):
    net = ResNet(arch, output_stride=8, frozen_bn=False)
    expected = [k for k in torchvision_resnet_keys(blocks, bottleneck) if not k.startswith("fc.")]
    assert list(net.state_dict()) == expected
    fc = 1000 * net.out_channels + 1000
    assert sum(p.numel() for p in net.parameters()) + fc == params  # torchvision's published counts


def test_pretrained_checkpoint_loads_into_frozen_backbone(tmp_path):
    ref = ResNet("resnet101", frozen_bn=False)
    sd = {k: torch.randn_like(v.float()) if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    assert sorted(sd) == sorted(torchvision_resnet_keys())
    torch.save(sd, tmp_path / "resnet101.pth")
    model = DeepLabV3Plus(19, "resnet101", 8, frozen_bn=True, pretrained=str(tmp_path / "resnet101.pth"))
    got = model.backbone.state_dict()
    assert torch.equal(got["layer3.22.conv3.weight"], sd["layer3.22.conv3.weight"])
    assert torch.equal(got["layer4.0.downsample.1.running_var"], sd["layer4.0.downsample.1.running_var"])
    assert isinstance(model.backbone.layer2[0].bn2, FrozenBatchNorm2d)
    # frozen BN has no trainable parameters anywhere
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    sd.pop("layer1.0.conv1.weight")
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="layer1.0.conv1.weight"):
        load_pretrained(ResNet("resnet101"), tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        load_pretrained(ResNet("resnet18"), tmp_path / "missing.pth")


@pytest.mark.parametrize("os_,dil", [(8, (1, 2, 4)), (16, (1, 1, 2))])
def test_output_stride_and_logit_shape(os_, dil):
    net = ResNet("resnet50", output_stride=os_, width=8)
    assert net.layer3[1].conv2.dilation[0] == dil[1] and net.layer4[1].conv2.dilation[0] == dil[2]
    assert net.layer4[0].conv2.stride[0] == (2 if os_ == 32 else 1)
    model = DeepLabV3Plus(19, "resnet50", os_, width=8, head_channels=16).eval()
    low, high = model.backbone(torch.randn(1, 3, 64, 96))
    assert low.shape[-2:] == (16, 24) and high.shape[-2:] == (64 // os_, 96 // os_)
    assert model(torch.randn(2, 3, 64, 96)).shape == (2, 19, 16, 24)


def test_param_groups_split_backbone_and_head():
    model = DeepLabV3Plus(16, "resnet18", width=8, head_channels=16, frozen_bn=False)
    bb, head = model.param_groups()
    assert len(bb) + len(head) == len(list(model.parameters()))
    assert any(p is model.classifier.weight for p in head)
