"""pi0's training samples: frames and their point maps resized with the same padding (the geometry teacher's points
sit under the pixels pi0 sees), absent cameras and padding without geometry, and no augmentation of the frames the
teacher reads."""

from __future__ import annotations

import numpy as np
import torch

from prismatic.models.pi0.processing_pi0 import Pi0BatchTransform, Pi0Processor, points_with_pad
from prismatic.models.pi0.tokenization_pi0 import Pi0Tokenizer
from prismatic.spatial_forcing import GeometryTeacher
from prismatic.testing.pi0_tiny import tiny_pi0_config


def test_point_maps_follow_the_frames_letterbox():
    height, width, size = 36, 64, 56  # 16:9, as a wide camera: 31 real rows, 12 padded above and 13 below
    columns = np.broadcast_to(np.arange(width, dtype=np.float32), (height, width))
    points = np.stack([columns, np.zeros_like(columns), np.full_like(columns, 2.0)], axis=-1)
    padded = points_with_pad(points, size)
    real_rows = ~np.isnan(padded[..., 2]).all(axis=1)
    assert real_rows.tolist() == [False] * 12 + [True] * 31 + [False] * 13
    assert np.isnan(padded[~real_rows]).all() and np.isfinite(padded[real_rows]).all()
    np.testing.assert_allclose(padded[real_rows][..., 2], 2.0)  # depth of a flat wall stays put
    # x grows from the frame's left to its right edge: bilinear with half-pixel centres, 64 -> 56 columns
    x = padded[real_rows][0, :, 0]
    np.testing.assert_allclose(x, (np.arange(size) + 0.5) * width / size - 0.5, atol=1e-4)
    square = np.random.default_rng(0).normal(size=(size, size, 3)).astype(np.float32)
    np.testing.assert_array_equal(points_with_pad(square, size), square)  # a square frame at pi0's size: unchanged


def test_batch_transform_gives_the_teacher_the_frames_unaugmented_and_their_points(sentencepiece_model):
    config = tiny_pi0_config(vocab_size=50)  # pi0's three cameras, 56 px
    processor = Pi0Processor(config, Pi0Tokenizer(sentencepiece_model, config.tokenizer_max_length))
    generator = np.random.default_rng(1)
    frames = generator.integers(0, 256, size=(2, 1, 56, 56, 3), dtype=np.uint8)
    points = generator.normal(size=(2, 1, 56, 56, 3)).astype(np.float32)
    frame = {
        "observation": {
            "image_primary": frames[0],
            "image_wrist": frames[1],
            "points_primary": points[0],
            "points_wrist": points[1],
            "proprio": np.zeros((1, 8), np.float32),
        },
        "task": {"language_instruction": b"open the drawer"},
        "action": np.zeros((8, 7), np.float32),
        "dataset_name": b"libero_spatial_no_noops",
    }
    sample = Pi0BatchTransform(processor, num_images=2)(frame)
    expected = torch.from_numpy(frames[:, 0]).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    torch.testing.assert_close(sample["images"][:2], expected, rtol=0, atol=1e-6)  # the data's frames, as given
    assert sample["image_masks"].tolist() == [True, True, False] and sample["letterbox_masks"][:2].all()
    torch.testing.assert_close(sample["camera_points"][:2], torch.from_numpy(points[:, 0]), rtol=0, atol=0)
    assert sample["camera_points"][2].isnan().all()  # pi0's third camera is absent: no geometry
    teacher = GeometryTeacher(16, config.patch_size, (-1.0, -1.0, 0.0), (1.0, 1.0, 3.0))
    features = teacher(None, sample["camera_points"][None]).features
    assert features.shape == (1, 3, 16, 16) and torch.isfinite(features).all()
