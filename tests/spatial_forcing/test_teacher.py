"""VGGTTeacher: frozen, eval-mode, no-grad, float32 features of the selected layer."""

from __future__ import annotations

import pytest
import torch

from prismatic.spatial_forcing import TeacherFeatures, VGGTTeacher


def _images(batch: int = 2, cameras: int = 2, height: int = 28, width: int = 42) -> torch.Tensor:
    return torch.rand(batch, cameras, 3, height, width)


def test_teacher_is_frozen_float32_and_stays_in_eval_mode(tiny_vggt):
    tiny_vggt.bfloat16().train()
    teacher = VGGTTeacher(tiny_vggt)
    assert teacher.aggregator is tiny_vggt.aggregator
    parameters = list(teacher.parameters())
    assert parameters and all(p.dtype == torch.float32 and not p.requires_grad for p in parameters)
    teacher.train()
    assert not teacher.training and not tiny_vggt.aggregator.training
    parent = torch.nn.ModuleDict({"teacher": teacher}).train()
    assert not parent["teacher"].aggregator.training


def test_features_of_the_selected_layer_without_gradients(tiny_vggt):
    aggregator = tiny_vggt.aggregator
    images = _images().requires_grad_(True)
    output = VGGTTeacher(tiny_vggt, layer=-2)(images)
    assert isinstance(output, TeacherFeatures)
    features, patch_start_idx, image_hw = output
    all_layers, _ = aggregator(images.detach())
    torch.testing.assert_close(features, all_layers[-2], rtol=0, atol=0)
    assert features.shape == (2, 2, 5 + 2 * 3, 16) and features.dtype == torch.float32
    assert not features.requires_grad
    assert patch_start_idx == 5 and image_hw == (28, 42)
    first_call = aggregator.calls[0]
    assert first_call["output_layers"] == [-2]
    assert not first_call["grad_enabled"] and not first_call["training"]
    assert not first_call["cuda_autocast"]  # autocast only when the images are on CUDA


def test_prepare_images_maps_vla_pixels_to_teacher_images(tiny_vggt):
    pixel_values = torch.rand(1, 12, 28, 28)  # two 6-channel camera slots, as OpenVLA stacks them

    def first_three_channels_per_camera(pixels: torch.Tensor) -> torch.Tensor:
        return pixels.unflatten(1, (2, 6))[:, :, :3]  # [B, 2, 3, H, W]

    features, _, image_hw = VGGTTeacher(tiny_vggt, prepare_images=first_three_channels_per_camera)(pixel_values)
    assert tiny_vggt.aggregator.calls[0]["images_shape"] == (1, 2, 3, 28, 28)
    assert features.shape[:2] == (1, 2) and image_hw == (28, 28)


def test_a_bare_aggregator_callable_works_too(tiny_vggt):
    features, patch_start_idx, _ = VGGTTeacher(tiny_vggt.aggregator)(_images())
    assert features.shape == (2, 2, 11, 16) and patch_start_idx == 5


def test_bad_teacher_images_and_layer_counts_are_reported(tiny_vggt):
    with pytest.raises(ValueError, match=r"\[B, S, 3, H, W\]; the input gave \(2, 12, 28, 28\)"):
        VGGTTeacher(tiny_vggt)(torch.rand(2, 12, 28, 28))
    with pytest.raises(ValueError, match=r"\[B, S, 3, H, W\]; prepare_images gave \(2, 2, 6, 28, 28\)"):
        VGGTTeacher(tiny_vggt, prepare_images=lambda pixels: pixels.unflatten(1, (2, 6)))(torch.rand(2, 12, 28, 28))

    def all_layers(images, output_layers=None):
        return tiny_vggt.aggregator(images)

    with pytest.raises(ValueError, match=r"returned 3 layers for output_layers=\[-1\]; expected 1"):
        VGGTTeacher(all_layers)(_images())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_teacher_runs_under_bf16_autocast_and_returns_float32(tiny_vggt):
    teacher = VGGTTeacher(tiny_vggt).cuda()
    features, _, _ = teacher(_images().cuda())
    call = tiny_vggt.aggregator.calls[0]
    assert call["cuda_autocast"] and call["cuda_autocast_dtype"] == torch.bfloat16
    assert features.dtype == torch.float32 and features.is_cuda
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
