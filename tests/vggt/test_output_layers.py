"""Feature mode: output layer selection, what is kept in memory, batching, frames and the returned object."""

from __future__ import annotations

import gc

import pytest
import torch

from vggt.models.vggt import VGGT, VGGTFeatures
from vggt.presets import tiny_vggt_kwargs


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(1, 3, 3, 28, 42, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def all_layers(golden_tiny_vggt: VGGT, images: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return golden_tiny_vggt(images)[0]


def test_selected_layers_equal_the_full_run_in_the_requested_order(golden_tiny_vggt, images, all_layers):
    with torch.no_grad():
        last, _ = golden_tiny_vggt(images, output_layers=[-1])
        reordered, _ = golden_tiny_vggt(images, output_layers=[1, 0])
    assert len(last) == 1 and torch.equal(last[0], all_layers[-1])
    assert torch.equal(reordered[0], all_layers[1]) and torch.equal(reordered[1], all_layers[0])


def test_layer_halves_are_frame_then_global_block_outputs(golden_tiny_vggt, images, all_layers):
    aggregator = golden_tiny_vggt.aggregator
    captured = {}
    hooks = [
        aggregator.frame_blocks[1].register_forward_hook(lambda m, i, o: captured.__setitem__("frame", o)),
        aggregator.global_blocks[1].register_forward_hook(lambda m, i, o: captured.__setitem__("global", o)),
    ]
    with torch.no_grad():
        golden_tiny_vggt(images, output_layers=[-1])
    for hook in hooks:
        hook.remove()
    batch, frames, tokens, width = all_layers[1].shape
    assert torch.equal(all_layers[1][..., : width // 2], captured["frame"].reshape(batch, frames, tokens, -1))
    assert torch.equal(all_layers[1][..., width // 2 :], captured["global"].reshape(batch, frames, tokens, -1))


def _live_tensors_when_last_block_runs(model: VGGT, images: torch.Tensor, output_layers) -> dict[str, int]:
    """How many more tensors (owning their memory, not views) shaped like a layer output [B, S, P, 2C] or a block
    output [B*S, P, C] / [B, S*P, C] are alive when the last global block starts than before the forward."""
    batch, frames = images.shape[:2]
    tokens = model.aggregator.patch_start_idx + (images.shape[-2] // 14) * (images.shape[-1] // 14)
    width = model.embed_dim
    shapes = {
        "layer_output": (batch, frames, tokens, 2 * width),
        "frame_block_output": (batch * frames, tokens, width),
        "global_block_output": (batch, frames * tokens, width),
    }

    def count_live() -> dict[str, int]:
        gc.collect()
        tensors = [obj for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor)]
        live = [tuple(tensor.shape) for tensor in tensors if tensor._base is None]
        return {name: live.count(shape) for name, shape in shapes.items()}

    before = count_live()
    during: dict[str, int] = {}
    last_block = model.aggregator.global_blocks[-1]
    hook = last_block.register_forward_pre_hook(lambda module, args: during.update(count_live()))
    with torch.no_grad():
        model(images, output_layers=output_layers)
    hook.remove()
    return {name: during[name] - before[name] for name in shapes}


def test_last_layer_only_keeps_no_earlier_layer_tensors(golden_tiny_vggt, images):
    # Only the running block's input (the last frame block's output) is alive.
    expected = {"layer_output": 0, "frame_block_output": 1, "global_block_output": 0}
    assert _live_tensors_when_last_block_runs(golden_tiny_vggt, images, [-1]) == expected
    # Upstream behaviour (all layers) holds layer 0's output by then: the count does see kept tensors.
    expected_all = {"layer_output": 1, "frame_block_output": 1, "global_block_output": 0}
    assert _live_tensors_when_last_block_runs(golden_tiny_vggt, images, None) == expected_all


def test_blocks_after_the_last_requested_layer_do_not_run(golden_tiny_vggt, images, all_layers):
    calls = []
    hook = golden_tiny_vggt.aggregator.frame_blocks[1].register_forward_hook(lambda m, i, o: calls.append(1))
    with torch.no_grad():
        first, _ = golden_tiny_vggt(images, output_layers=[0])
    hook.remove()
    assert calls == []
    assert torch.equal(first[0], all_layers[0])


@pytest.mark.parametrize("bad", [[2], [-3], []])
def test_out_of_range_output_layers_are_rejected(golden_tiny_vggt, images, bad):
    with pytest.raises(ValueError, match="output_layers"):
        golden_tiny_vggt(images, output_layers=bad)


def test_output_layers_must_be_a_sequence(golden_tiny_vggt, images):
    with pytest.raises(TypeError, match=r"such as \[-1\]"):
        golden_tiny_vggt(images, output_layers=-1)


def test_batched_sequences_equal_separate_runs(golden_tiny_vggt):
    images = torch.rand(2, 2, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        batched, _ = golden_tiny_vggt(images, output_layers=[-1])
        separate = [golden_tiny_vggt(images[i : i + 1], output_layers=[-1])[0][0] for i in range(2)]
    torch.testing.assert_close(batched[0], torch.cat(separate), rtol=1e-5, atol=1e-5)


def test_first_frame_uses_its_own_camera_and_register_slot(golden_tiny_vggt, images):
    """Frame order matters only through the slot-0 tokens: swapping frames 1 and 2 permutes their outputs."""
    swapped = images[:, [0, 2, 1]]
    with torch.no_grad():
        original, _ = golden_tiny_vggt(images, output_layers=[-1])
        permuted, _ = golden_tiny_vggt(swapped, output_layers=[-1])
        new_first, _ = golden_tiny_vggt(images[:, [1, 0, 2]], output_layers=[-1])
    torch.testing.assert_close(permuted[0], original[0][:, [0, 2, 1]], rtol=1e-5, atol=1e-5)
    assert (new_first[0][:, 0] - original[0][:, 1]).abs().max() > 1e-2


def test_single_frame_and_four_dimensional_input(golden_tiny_vggt, images):
    with torch.no_grad():
        five_d, _ = golden_tiny_vggt(images[:, :1], output_layers=[-1])
        four_d, _ = golden_tiny_vggt(images[0, :1], output_layers=[-1])
    assert five_d[0].shape == (1, 1, 5 + 2 * 3, 768)
    assert torch.equal(five_d[0], four_d[0])


def test_features_unpack_as_a_tuple_and_read_like_spatial_forcing_predictions(golden_tiny_vggt, images):
    with torch.no_grad():
        output = golden_tiny_vggt(images, output_layers=[-1])
    features, patch_start_idx = output
    assert isinstance(output, VGGTFeatures)
    assert output["features"] is features and output.features is features
    assert output["patch_start_idx"] == patch_start_idx == 5
    assert output["images"].shape == (1, 3, 3, 28, 42)  # eval mode, as upstream
    with pytest.raises(KeyError, match="depth"):
        output["depth"]


def test_training_mode_recomputes_blocks_in_backward_with_identical_outputs():
    """As upstream, blocks are activation-checkpointed in training: each runs again during backward."""
    model = VGGT(**tiny_vggt_kwargs()).train()
    images = torch.rand(1, 2, 3, 28, 28)
    calls = []
    hook = model.aggregator.frame_blocks[0].register_forward_pre_hook(lambda module, args: calls.append(1))
    output = model(images, output_layers=[-1])
    assert len(calls) == 1
    assert output.images is None  # upstream returns the images in eval mode only
    output.features[0].square().mean().backward()
    hook.remove()
    assert len(calls) == 2
    assert model.aggregator.frame_blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.aggregator.patch_embed.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        eval_features = model.eval()(images, output_layers=[-1]).features[0]
    torch.testing.assert_close(output.features[0].detach(), eval_features, rtol=0, atol=0)


def test_bf16_autocast_keeps_the_residual_stream_and_features_in_fp32(golden_tiny_vggt, golden_main):
    """As upstream: concatenations with fp32 parameters and LayerScale promote back, so features stay fp32."""
    with torch.no_grad():
        reference = golden_tiny_vggt(golden_main["images"], output_layers=[-1]).features[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = golden_tiny_vggt(golden_main["images"], output_layers=[-1]).features[0]
    assert mixed.dtype == torch.float32
    assert 0 < (mixed - reference).abs().max() < 0.1  # bf16 matmuls, values up to ~5.5
