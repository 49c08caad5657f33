"""``--model_family openvla-oft`` (the default) in the fine-tuning scripts: the training half of OpenVLA-OFT
(:class:`prismatic.training.training_family.TrainingFamily`).

The base VLA of ``--vla_path`` (released layout), optionally quantised, with LoRA adapters (``--use_lora``) and FiLM
(``--use_film``), and the heads the flags ask for (``prismatic.policy.components.build_heads``). The heads own their
loss: a continuous head (L1 regression or diffusion) reads the final hidden states of the action slots and computes
its loss with its ``training_inputs`` + ``loss``; without one, the LM's next-token loss on the action ids is OpenVLA's
discrete action tokens. Spatial Forcing aligns the visual tokens of layer ``--vla_layers_align`` (after BOS) with the
teacher's features of the same frames.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch

from prismatic.models.quantization import quantize_base
from prismatic.policy.components import build_heads
from prismatic.training import checkpointing as ckpt
from prismatic.training.alignment import PrepareImages, build_alignment
from prismatic.training.config import FinetuneConfig
from prismatic.training.lora import apply_lora, merge_lora
from prismatic.training.strategy import load_full_state_dict, prepare_for_training
from prismatic.training.training_family import BatchFormat, TrainingModel, training_policy_config
from prismatic.util.checkpoint_files import LORA_ADAPTER_DIR
from prismatic.util.file_checks import check_folder, check_model_weights
from prismatic.vla.constants import PlatformConstants


def oft_teacher_images(num_images_in_input: int) -> PrepareImages:
    """OpenVLA's fused-backbone pixel values (``num_images_in_input`` cameras) to teacher frames."""
    from vggt.utils.load_fn import vla_pixels_to_vggt_images

    return partial(vla_pixels_to_vggt_images, num_images=num_images_in_input)


def llm_num_layers(vla_path: Path) -> int:
    """The decoder layers of the base VLA's LLM, from its ``config.json``."""
    check_folder(vla_path, "--vla_path", "a local OpenVLA folder in the released layout (e.g. ckpts/openvla-7b)")
    config_path = vla_path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"--vla_path {vla_path}: no config.json there. Expected a local OpenVLA folder in the released layout "
            f"(download openvla/openvla-7b into ckpts/openvla-7b)."
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"--vla_path: {config_path} is not valid JSON ({error}).") from error
    # openvla-7b's config.json stores only a few text_config keys; Llama-2-7B's 32 layers are the default.
    return int(config.get("text_config", {}).get("num_hidden_layers", 32))


class OFTTraining:
    """OpenVLA-OFT as the fine-tuning loop trains it."""

    family_name = "openvla-oft"

    def check_base_model(self, cfg: FinetuneConfig, platform: PlatformConstants) -> int:
        num_layers = llm_num_layers(Path(cfg.vla_path))
        check_model_weights(Path(cfg.vla_path), "--vla_path")
        return num_layers

    def build(self, cfg: FinetuneConfig, platform: PlatformConstants, device: torch.device) -> TrainingModel:
        """Loads the base VLA (+ LoRA, FiLM), creates the heads, the aligner and the frozen teacher on ``device``."""
        from transformers import AutoModelForVision2Seq, AutoProcessor

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        processor = AutoProcessor.from_pretrained(cfg.vla_path)
        vla = AutoModelForVision2Seq.from_pretrained(
            cfg.vla_path, dtype=dtype, attn_implementation=cfg.attn_implementation, low_cpu_mem_usage=True
        )
        vla.set_num_images_in_input(cfg.num_images_in_input)
        vla.config.set_platform(platform)
        num_patches = vla.vision_backbone.get_num_patches() * vla.vision_backbone.get_num_images_in_input()
        llm_dim = vla.config.text_config.hidden_size
        vla = quantize_base(vla, cfg.quantize_base, device, dtype)  # "none": only moves it to the device
        if cfg.use_lora:
            vla = apply_lora(vla, cfg.lora_rank, cfg.lora_dropout, fp32_adapters=cfg.lora_fp32)
        if cfg.use_film:  # as upstream, after LoRA: the new FiLM layers (fp32) are trained in full, without adapters
            ckpt.unwrap_peft(vla).enable_film()
            vla.to(device)  # the new FiLM layers
        prepare_for_training(vla, cfg)

        policy_config = training_policy_config(cfg, platform)
        heads = {name: module.to(device) for name, module in build_heads(policy_config, llm_dim).items()}
        if "action_head" in heads:  # upstream keeps the action head in bf16 on GPU, the projectors in fp32
            heads["action_head"] = heads["action_head"].to(dtype)
        aligner, teacher = build_alignment(
            cfg,
            policy_config,
            llm_dim,
            device,
            image_size=processor.image_processor.input_sizes[0][-1],
            prepare_images=oft_teacher_images(cfg.num_images_in_input),
        )
        return TrainingModel(vla, heads, processor, num_patches, policy_config, aligner, teacher)

    def batch_format(
        self, cfg: FinetuneConfig, model: TrainingModel, *, rank: int, train: bool, skip_samples: int
    ) -> BatchFormat:
        """Upstream's prompt with action tokens, fused-backbone pixel values and proprio; right-padded batches;
        ``--image_aug`` is the data pipeline's (random crops and colour jitter)."""
        from prismatic.vla.action_tokenizer import ActionTokenizer
        from prismatic.vla.datasets import PaddedCollatorForActionPrediction, RLDSBatchTransform

        tokenizer = model.processor.tokenizer
        transform = RLDSBatchTransform(
            ActionTokenizer(tokenizer),
            tokenizer,
            image_transform=model.processor.image_processor.apply_transform,
            use_wrist_image=cfg.num_images_in_input > 1,
            use_proprio=cfg.use_proprio,
        )
        return BatchFormat(
            transform,
            resize_resolution=tuple(model.processor.image_processor.input_sizes[0][1:]),
            collate=PaddedCollatorForActionPrediction(
                tokenizer.model_max_length, tokenizer.pad_token_id, padding_side="right"
            ),
            pipeline_image_aug=cfg.image_aug and train,
        )

    def losses(
        self, cfg: FinetuneConfig, model: TrainingModel, batch: dict, device: torch.device
    ) -> dict[str, torch.Tensor]:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        labels = batch["labels"].to(device)
        actions = batch["actions"].to(device)  # [B, chunk, action_dim], normalised
        proprio = batch["proprio"].to(device) if cfg.use_proprio else None
        # A continuous head owns its loss (and the extra VLA inputs it trains on); without one, the LM's next-token
        # loss on the action ids is OpenVLA's discrete action tokens.
        action_head = model.heads.get("action_head")
        head = ckpt.unwrap(action_head) if action_head is not None else None
        head_inputs = head.training_inputs(actions) if head is not None else {}

        with autocast:
            output = model.vla(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                pixel_values=batch["pixel_values"].to(device),
                labels=labels,
                output_hidden_states=True,
                proprio=proprio,
                proprio_projector=model.heads.get("proprio_projector"),
                noisy_actions=head_inputs.get("noisy_actions"),
                noisy_action_projector=model.heads.get("noisy_action_projector"),
                diffusion_timestep_embeddings=head_inputs.get("diffusion_timestep_embeddings"),
                use_film=cfg.use_film,
                return_lm_logits=head is None,
            )
            num_prefix_tokens = output.projector_features.shape[1]
            if head is None:
                losses = {"action_loss": output.loss}
            else:
                predicted = action_head(_action_head_input(head, output, labels, num_prefix_tokens))
                losses = head.loss(predicted, head_inputs["target"])
        loss = losses["action_loss"]

        # --- Spatial Forcing: align the visual tokens of layer vla_layers_align with frozen-VGGT features ---
        if model.aligner is not None:
            visual_hidden = model.aligner.select_vision_tokens(
                output.hidden_states, num_prefix_tokens=1, num_vision_tokens=model.num_patches
            )  # [B, num_patches, D]; position 0 is BOS
            camera_points = batch.get("camera_points")  # [B, S, H, W, 3] with --teacher geometry
            teacher_features = model.teacher(
                batch["pixel_values"].to(device), None if camera_points is None else camera_points.to(device)
            )
            with autocast:
                align_loss = model.aligner(visual_hidden, *teacher_features)
            losses["align_loss"] = align_loss
            loss = loss + cfg.align_loss_coeff * align_loss
        losses["loss"] = loss
        return losses

    def save_model_files(
        self, cfg: FinetuneConfig, model: TrainingModel, folder: Path, vla_state: dict[str, torch.Tensor]
    ) -> None:
        """A full fine-tune's VLA; a LoRA run's merged VLA with ``--merge_lora_during_training`` (else the adapter
        alone, which the loop saves)."""
        vla = ckpt.unwrap(model.vla)
        if not cfg.use_lora:
            vla.save_pretrained(folder, state_dict=vla_state)
        elif cfg.merge_lora_during_training:
            merged = merge_lora(cfg.vla_path, folder / LORA_ADAPTER_DIR, next(ckpt.unwrap_peft(vla).parameters()).dtype)
            merged.save_pretrained(folder)
            del merged

    def restore_full_weights(self, model: TrainingModel, folder: Path) -> None:
        load_full_state_dict(model.vla, ckpt.read_saved_weights(folder), strict=True)


def _action_head_input(head: torch.nn.Module, output, labels: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Final-layer hidden states of the action slots [B, chunk * action_dim, D], in the head's dtype."""
    from prismatic.models.action_masks import gather_action_hidden_states

    actions_hidden = gather_action_hidden_states(output.hidden_states[-1], labels, num_prefix_tokens)
    return actions_hidden.to(next(head.parameters()).dtype)
