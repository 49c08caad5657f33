"""Image processor and processor of Prismatic / OpenVLA, reading and writing the released processor files.

Each image becomes ``3 * num_towers`` channels: one resized, cropped and normalised copy per vision tower (for the
fused backbone: DINOv2/ImageNet statistics first, then SigLIP's 0.5/0.5), stacked on the channel axis. The
serialised ``tvf_*`` parameters (torchvision-functional arguments) of a released ``preprocessor_config.json`` are
used as stored, so preprocessing matches the checkpoint's exactly.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torchvision.transforms.functional as TVF
from PIL import Image
from torchvision.transforms import InterpolationMode
from transformers import BatchFeature, PreTrainedTokenizerBase
from transformers.image_processing_utils import ImageProcessingMixin
from transformers.processing_utils import ProcessorMixin

from prismatic.models.configuration_prismatic import PrismaticConfig

IMAGE_RESIZE_STRATEGIES = ("resize-naive", "resize-crop", "letterbox")


def letterbox_pad_transform(image: Image.Image, padding_fill_value: tuple[int, int, int]) -> Image.Image:
    """Pad a PIL image to a square with a symmetric constant border."""
    (width, height), side = image.size, max(image.size)
    horizontal_pad, vertical_pad = (side - width) // 2, (side - height) // 2
    padding = [horizontal_pad, vertical_pad, horizontal_pad, vertical_pad]
    return TVF.pad(image, padding, fill=padding_fill_value, padding_mode="constant")


class PrismaticImageProcessor(ImageProcessingMixin):
    """Resize (bicubic, antialiased) -> centre crop -> to tensor -> normalise, once per vision tower, stacked.

    ``image_resize_strategy``: "resize-naive" resizes straight to the input size (OpenVLA), "resize-crop" resizes
    the short side then centre-crops, "letterbox" pads to a square (fill = the mean colour) first.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        use_fused_vision_backbone: bool = False,
        image_resize_strategy: str = "letterbox",
        input_sizes: list[tuple[int, int, int]] | None = None,
        interpolations: list[str] | None = None,
        means: list[tuple[float, float, float]] | None = None,
        stds: list[tuple[float, float, float]] | None = None,
        **kwargs: Any,
    ) -> None:
        if image_resize_strategy not in IMAGE_RESIZE_STRATEGIES:
            raise ValueError(
                f"image_resize_strategy={image_resize_strategy!r} is not supported; expected one of "
                f"{list(IMAGE_RESIZE_STRATEGIES)}."
            )
        self.use_fused_vision_backbone = use_fused_vision_backbone
        self.image_resize_strategy = image_resize_strategy
        self.input_sizes = [list(size) for size in (input_sizes or [(3, 224, 224)])]
        num_towers = len(self.input_sizes)
        self.interpolations = list(interpolations or ["bicubic"] * num_towers)
        self.means = [list(mean) for mean in (means or [(0.5, 0.5, 0.5)] * num_towers)]
        self.stds = [list(std) for std in (stds or [(0.5, 0.5, 0.5)] * num_towers)]
        for name in ("interpolations", "means", "stds"):
            if len(getattr(self, name)) != num_towers:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries; expected {num_towers} (input_sizes).")

        # Stored parameters (released files carry them) win over the ones derived from the fields above.
        self.tvf_resize_params = kwargs.pop("tvf_resize_params", None) or [
            self._resize_params(size, interpolation)
            for size, interpolation in zip(self.input_sizes, self.interpolations, strict=True)
        ]
        self.tvf_crop_params = kwargs.pop("tvf_crop_params", None) or [
            {"output_size": list(size[-2:])} for size in self.input_sizes
        ]
        self.tvf_normalize_params = kwargs.pop("tvf_normalize_params", None) or [
            {"mean": mean, "std": std, "inplace": False} for mean, std in zip(self.means, self.stds, strict=True)
        ]
        derived_letterbox = image_resize_strategy == "letterbox"
        self.tvf_do_letterbox = kwargs.pop("tvf_do_letterbox", derived_letterbox)
        stored_fill = kwargs.pop("tvf_letterbox_fill", None)
        derived_fill = [int(x * 255) for x in self.means[-1]] if derived_letterbox else None
        self.tvf_letterbox_fill = stored_fill if stored_fill is not None else derived_fill
        super().__init__(**kwargs)

    def _resize_params(self, input_size: list[int], interpolation: str) -> dict[str, Any]:
        side = input_size[-1]
        return {
            "size": [side, side] if self.image_resize_strategy == "resize-naive" else side,
            "interpolation": TVF.pil_modes_mapping[InterpolationMode(interpolation)],
            "max_size": None,
            "antialias": True,
        }

    def apply_transform(self, img: Image.Image) -> torch.Tensor:
        """One PIL image -> float tensor [3 * num_towers, H, W]."""
        if self.tvf_do_letterbox:
            img = letterbox_pad_transform(img, tuple(self.tvf_letterbox_fill))
        per_tower = []
        for resize, crop, normalize in zip(
            self.tvf_resize_params, self.tvf_crop_params, self.tvf_normalize_params, strict=True
        ):
            resized = TVF.resize(
                img,
                size=resize["size"],
                interpolation=resize["interpolation"],  # PIL code (3 = bicubic), as serialised upstream
                max_size=resize.get("max_size"),
                antialias=resize.get("antialias", True),
            )
            tensor = TVF.to_tensor(TVF.center_crop(resized, crop["output_size"]))  # [3, H, W] in [0, 1]
            per_tower.append(TVF.normalize(tensor, mean=normalize["mean"], std=normalize["std"]))
        return torch.cat(per_tower, dim=0)

    def preprocess(
        self, images: Image.Image | list[Image.Image], return_tensors: str | None = None, **_: Any
    ) -> BatchFeature:
        """A PIL image or a list of them -> ``BatchFeature(pixel_values=[N, 3 * num_towers, H, W])`` (float32)."""
        images = images if isinstance(images, list) else [images]
        pixel_values = torch.stack([self.apply_transform(image.convert("RGB")) for image in images])
        return BatchFeature(data={"pixel_values": pixel_values.float().numpy()}, tensor_type=return_tensors)

    def __call__(self, images: Image.Image | list[Image.Image], **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    @classmethod
    def from_vla_config(cls, config: PrismaticConfig) -> PrismaticImageProcessor:
        """The processor a checkpoint of ``config`` is used with: input size, interpolation and normalisation of
        each timm tower's pretrained configuration."""
        pretrained_cfgs = [timm.models.get_pretrained_cfg(model_id) for model_id in config.timm_model_ids]
        missing = [
            model_id for model_id, cfg in zip(config.timm_model_ids, pretrained_cfgs, strict=True) if cfg is None
        ]
        if missing:
            raise ValueError(f"timm has no pretrained configuration for {missing}.")
        return cls(
            use_fused_vision_backbone=config.use_fused_vision_backbone,
            image_resize_strategy=config.image_resize_strategy,
            input_sizes=[[3, size, size] for size in config.image_sizes],
            interpolations=[cfg.interpolation for cfg in pretrained_cfgs],
            means=[list(cfg.mean) for cfg in pretrained_cfgs],
            stds=[list(cfg.std) for cfg in pretrained_cfgs],
        )


class PrismaticProcessor(ProcessorMixin):
    """Image processor + tokenizer: ``processor(prompt, image)`` -> input_ids, attention_mask, pixel_values."""

    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        image_processor: PrismaticImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        text: str | list[str],
        images: Image.Image | list[Image.Image],
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Tokenise ``text`` and preprocess ``images`` (one image per text)."""
        pixel_values = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        text_inputs = self.tokenizer(
            text, return_tensors=return_tensors, padding=padding, truncation=truncation, max_length=max_length
        )
        num_texts, num_images = len(text_inputs["input_ids"]), len(pixel_values)
        if num_texts != num_images:
            raise ValueError(f"Got {num_texts} text input(s) but {num_images} image(s); pass one image per text.")
        return BatchFeature(data={**text_inputs, "pixel_values": pixel_values})

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))
