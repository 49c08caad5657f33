"""The image processor and processor: 6-channel stacking, released file format, save/load round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor

from prismatic.models import PrismaticImageProcessor, PrismaticProcessor
from prismatic.testing.tiny_vla import RELEASED_PROCESSOR_AUTO_MAP, tiny_vla_config
from prismatic.testing.tokenizer import build_tiny_tokenizer
from prismatic.vla.prompt import build_prompt

IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def random_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def image_processor() -> PrismaticImageProcessor:
    return PrismaticImageProcessor.from_vla_config(tiny_vla_config())


def test_image_processor_matches_openvla_7b_preprocessing(image_processor: PrismaticImageProcessor):
    assert image_processor.image_resize_strategy == "resize-naive"
    assert image_processor.means == [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]]
    assert image_processor.stds == [[0.229, 0.224, 0.225], [0.5, 0.5, 0.5]]
    assert [params["interpolation"] for params in image_processor.tvf_resize_params] == [3, 3]  # bicubic

    image = random_image((224, 224))  # already at input size: resizing is the identity
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    tensor = image_processor.apply_transform(image)
    assert tensor.shape == (6, 224, 224) and tensor.dtype == torch.float32
    dino = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    siglip = (pixels - 0.5) / 0.5
    np.testing.assert_allclose(tensor[:3].permute(1, 2, 0).numpy(), dino, atol=1e-5)
    np.testing.assert_allclose(tensor[3:].permute(1, 2, 0).numpy(), siglip, atol=1e-5)


def test_resize_is_bicubic_with_antialias_to_the_full_input_size(image_processor: PrismaticImageProcessor):
    image = random_image((256, 200), seed=1)  # not square: resize-naive squashes, no crop
    expected = np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    tensor = image_processor.apply_transform(image)
    np.testing.assert_allclose(tensor[3:].permute(1, 2, 0).numpy(), (expected - 0.5) / 0.5, atol=1e-5)


def test_stored_released_parameters_are_used_as_stored(tmp_path: Path):
    """A released preprocessor_config.json (auto_map to remote code) loads locally; its tvf params win."""
    stored_mean = [0.484375, 0.455078125, 0.40625]
    released = {
        "auto_map": RELEASED_PROCESSOR_AUTO_MAP,
        "image_processor_type": "PrismaticImageProcessor",
        "image_resize_strategy": "resize-naive",
        "input_sizes": [[3, 224, 224], [3, 224, 224]],
        "interpolations": ["bicubic", "bicubic"],
        "means": [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]],
        "processor_class": "PrismaticProcessor",
        "stds": [[0.229, 0.224, 0.225], [0.5, 0.5, 0.5]],
        "tvf_crop_params": [{"output_size": [224, 224]}, {"output_size": [224, 224]}],
        "tvf_do_letterbox": False,
        "tvf_letterbox_fill": None,
        "tvf_normalize_params": [
            {"inplace": False, "mean": stored_mean, "std": [0.229, 0.224, 0.225]},
            {"inplace": False, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        ],
        "tvf_resize_params": [
            {"antialias": True, "interpolation": 3, "max_size": None, "size": [224, 224]},
            {"antialias": True, "interpolation": 3, "max_size": None, "size": [224, 224]},
        ],
        "use_fused_vision_backbone": True,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(released))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "openvla"}))
    loaded = AutoImageProcessor.from_pretrained(tmp_path, trust_remote_code=False)
    assert isinstance(loaded, PrismaticImageProcessor)
    image = random_image((224, 224), seed=2)
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    dino = loaded.apply_transform(image)[:3].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(dino, (pixels - stored_mean) / IMAGENET_STD, atol=1e-5)


def test_processor_tokenises_and_stacks(image_processor: PrismaticImageProcessor):
    processor = PrismaticProcessor(image_processor, build_tiny_tokenizer())
    prompt = build_prompt("put the bowl on the plate")
    inputs = processor(prompt, random_image((256, 256)))
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values"}
    assert inputs["input_ids"][0, 0].item() == 1  # BOS
    assert inputs["pixel_values"].shape == (1, 6, 224, 224) and inputs["pixel_values"].dtype == torch.float32
    assert bool(inputs["attention_mask"].all())
    with pytest.raises(ValueError, match="2 text input"):
        processor([prompt, prompt], random_image((256, 256)))


def test_processor_round_trips_through_auto_processor(tmp_path: Path, image_processor: PrismaticImageProcessor):
    processor = PrismaticProcessor(image_processor, build_tiny_tokenizer())
    processor.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "openvla"}))
    assert (tmp_path / "preprocessor_config.json").exists() and (tmp_path / "tokenizer.json").exists()
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=False)
    assert isinstance(loaded, PrismaticProcessor) and isinstance(loaded.image_processor, PrismaticImageProcessor)
    prompt, image = build_prompt("open the top drawer"), random_image((128, 96), seed=3)
    expected, actual = processor(prompt, image), loaded(prompt, image)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert loaded.tokenizer.pad_token_id == 32000 and loaded.tokenizer.padding_side == "right"
