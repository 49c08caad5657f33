"""Prismatic VLM and OpenVLA(-OFT) models: fused timm vision backbone, MLP projector and a transformers LLM.

The multimodal sequence is ``[BOS, projected patches of every image, (proprio token), (diffusion timestep token),
text tokens 1..]``. The action slots of OpenVLA-OFT get zero input embeddings (or noisy-action embeddings for the
diffusion head) and all non-pad tokens attend to each other (parallel decoding), through an explicit 4D mask. The
module tree and parameter names match the released ``openvla/openvla-7b`` safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from timm.layers import AttentionPoolLatent
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from prismatic.models.action_heads import DiffusionActionHead
from prismatic.models.action_masks import gather_action_hidden_states, get_actions_mask
from prismatic.models.attention import bidirectional_attention_mask, check_attn_implementation
from prismatic.models.configuration_prismatic import OpenVLAConfig, PrismaticConfig
from prismatic.models.projectors import NoisyActionProjector, PrismaticProjector, ProprioProjector
from prismatic.models.vision_backbone import FiLMedPrismaticVisionBackbone, LayerScale, PrismaticVisionBackbone
from prismatic.vla.constants import IGNORE_INDEX, STOP_INDEX
from prismatic.vla.normalization import unnormalize

# Llama-2's "▁" token; training prompts end with it right before the first action token.
EMPTY_TOKEN_ID = 29871
# The id placed in the action slots at inference (its embedding is zeroed anyway), as upstream.
ACTION_PLACEHOLDER_ID = 1


@dataclass
class PrismaticCausalLMOutputWithPast(ModelOutput):
    """The LLM's causal-LM output over the multimodal sequence, plus the inserted (projected) prefix tokens.

    ``hidden_states`` is the LLM's tuple: index 0 = input embeddings, k = after k decoder layers, -1 = after the
    final norm. ``projector_features`` [B, num_prefix_tokens, D] = projected patches (+ proprio, + timestep token).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Any = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    projector_features: torch.FloatTensor | None = None


class PrismaticPreTrainedModel(PreTrainedModel):
    config_class = PrismaticConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PrismaticProjector"]
    _skip_keys_device_placement = "past_key_values"
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False
    ) -> str:
        check_attn_implementation(attn_implementation)
        return super()._check_and_adjust_attn_implementation(attn_implementation, is_init_check)

    def _init_weights(self, module: nn.Module) -> None:
        # Meant for fine-tuning released weights, not for training from scratch (as upstream).
        std = self.config.text_config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            module.weight.data.fill_(1.0)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, LayerScale):
            module.scale_factor.data.fill_(module.init_values)
        elif isinstance(module, VisionTransformer):
            for name in ("cls_token", "reg_token", "pos_embed"):
                if getattr(module, name, None) is not None:
                    getattr(module, name).data.normal_(mean=0.0, std=std)
        elif isinstance(module, AttentionPoolLatent):
            module.latent.data.normal_(mean=0.0, std=std)


class PrismaticForConditionalGeneration(PrismaticPreTrainedModel):
    """Vision backbone + projector + LLM; ``forward`` runs the multimodal sequence with bidirectional attention."""

    def __init__(self, config: PrismaticConfig) -> None:
        super().__init__(config)
        self.vision_backbone = PrismaticVisionBackbone(
            config.use_fused_vision_backbone,
            config.image_sizes,
            config.timm_model_ids,
            config.timm_override_act_layers,
            config.timm_model_kwargs,
        )
        self.projector = PrismaticProjector(
            config.use_fused_vision_backbone,
            vision_dim=self.vision_backbone.embed_dim,
            llm_dim=config.text_config.hidden_size,
        )
        # Built in the current default dtype: the stored text_config's dtype must not override the caller's choice.
        self.language_model = AutoModelForCausalLM.from_config(
            config.text_config, attn_implementation=config._attn_implementation, dtype=torch.get_default_dtype()
        )
        self.vocab_size = config.text_config.vocab_size
        self.pad_token_id = config.pad_token_id
        self.llm_dim = config.text_config.hidden_size
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.language_model.set_output_embeddings(new_embeddings)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    def set_decoder(self, decoder: nn.Module) -> None:
        self.language_model.set_decoder(decoder)

    def set_num_images_in_input(self, num_images_in_input: int) -> None:
        """Number of camera images stacked on the channel axis of ``pixel_values``."""
        self.vision_backbone.set_num_images_in_input(num_images_in_input)

    def get_num_images_in_input(self) -> int:
        return self.vision_backbone.get_num_images_in_input()

    @property
    def uses_film(self) -> bool:
        return isinstance(self.vision_backbone, FiLMedPrismaticVisionBackbone)

    def enable_film(self) -> None:
        """Wrap every ViT block with FiLM (new ``scale``/``shift`` layers), as upstream does for ``use_film``."""
        if not self.uses_film:
            self.vision_backbone = FiLMedPrismaticVisionBackbone(self.vision_backbone, llm_dim=self.llm_dim)

    # === Pieces of the multimodal sequence ===
    @staticmethod
    def _action_slot_embeddings(
        embeddings: torch.Tensor, actions_mask: torch.Tensor, noisy_action_features: torch.Tensor | None
    ) -> torch.Tensor:
        """Zero the action-slot embeddings, or replace them by noisy-action features [B, slots, D] (diffusion)."""
        if noisy_action_features is None:
            return embeddings.masked_fill(actions_mask.unsqueeze(-1), 0.0)
        slots = torch.zeros_like(embeddings)
        slots[actions_mask] = noisy_action_features.reshape(-1, embeddings.shape[-1]).to(embeddings.dtype)
        return torch.where(actions_mask.unsqueeze(-1), slots, embeddings)

    @staticmethod
    def _average_language_embedding(embeddings: torch.Tensor, actions_mask: torch.Tensor) -> torch.Tensor:
        """FiLM's condition: mean embedding of the non-action tokens, [B, L, D] -> [B, D].

        As upstream (``input_embeddings[~all_actions_mask]`` then ``mean``): BOS, the prompt, the stop token and,
        in a right-padded batch, the pad tokens all enter the mean; only the action slots are left out.
        """
        keep = (~actions_mask).unsqueeze(-1)  # [B, L, 1]
        return (embeddings * keep).sum(dim=1) / keep.sum(dim=1)

    def _prefix_embeddings(
        self,
        pixel_values: torch.Tensor,
        proprio: torch.Tensor | np.ndarray | None,
        proprio_projector: ProprioProjector | None,
        average_language_embedding: torch.Tensor | None,
    ) -> torch.Tensor:
        """Projected patches of every image, then the proprio token if both proprio and its projector are given."""
        pixel_values = pixel_values.to(self.dtype)
        if average_language_embedding is None:
            patch_features = self.vision_backbone(pixel_values)  # [B, n_img * P, vision_dim]
        else:
            patch_features = self.vision_backbone(pixel_values, average_language_embedding)
        prefix = self.projector(patch_features)  # [B, n_img * P, D]
        if proprio is not None and proprio_projector is not None:
            projector_weight = next(proprio_projector.parameters())  # works for a DDP-wrapped projector too
            proprio = torch.as_tensor(proprio).to(device=projector_weight.device, dtype=projector_weight.dtype)
            proprio_token = proprio_projector(proprio.reshape(prefix.shape[0], -1))  # [B, D]
            prefix = torch.cat([prefix, proprio_token.unsqueeze(1).to(prefix.dtype)], dim=1)  # [B, n_img * P + 1, D]
        return prefix

    @staticmethod
    def _insert_prefix(
        text_embeddings: torch.Tensor,
        prefix: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Insert the prefix tokens after BOS: embeddings [B, L + P, D], key mask [B, L + P] and labels."""
        batch_size, num_prefix = prefix.shape[:2]
        embeddings = torch.cat([text_embeddings[:, :1], prefix, text_embeddings[:, 1:]], dim=1)
        prefix_mask = torch.ones((batch_size, num_prefix), dtype=torch.bool, device=attention_mask.device)
        attention_mask = attention_mask.bool()
        mask = torch.cat([attention_mask[:, :1], prefix_mask, attention_mask[:, 1:]], dim=1)
        if labels is not None:
            prefix_labels = torch.full((batch_size, num_prefix), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
            labels = torch.cat([labels[:, :1], prefix_labels, labels[:, 1:]], dim=1)
        return embeddings, mask, labels

    def _run_language_model(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_lm_logits: bool = True,
    ) -> Any:
        """The LLM over the multimodal sequence with bidirectional attention among its non-pad tokens.

        With ``return_lm_logits=False`` the LM head is skipped (no logits, no loss): the action-head paths only read
        hidden states, and the [B, L, 32064] logits are the largest activation of a training step.
        """
        attention_mask_4d = bidirectional_attention_mask(
            attention_mask, inputs_embeds.dtype, self.language_model.config._attn_implementation
        )
        kwargs = {
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention_mask_4d,
            "use_cache": bool(use_cache),
            "output_attentions": output_attentions,
            "output_hidden_states": output_hidden_states,
            "return_dict": True,
        }
        if not return_lm_logits:
            return self.language_model.model(**kwargs)
        return self.language_model(labels=labels, **kwargs)

    def _film_condition(
        self, embeddings: torch.Tensor, actions_mask: torch.Tensor, use_film: bool
    ) -> torch.Tensor | None:
        if not use_film:
            return None
        if not self.uses_film:
            raise ValueError("use_film=True needs the FiLM-wrapped vision backbone: call vla.enable_film() first.")
        return self._average_language_embedding(embeddings, actions_mask)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        proprio: torch.Tensor | None = None,
        proprio_projector: ProprioProjector | None = None,
        noisy_actions: torch.Tensor | None = None,
        noisy_action_projector: NoisyActionProjector | None = None,
        diffusion_timestep_embeddings: torch.Tensor | None = None,
        use_film: bool = False,
        return_lm_logits: bool = True,
    ) -> PrismaticCausalLMOutputWithPast | tuple:
        """Multimodal forward pass (training and evaluation), as OpenVLA-OFT's ``finetune.py`` calls it.

        Args:
            input_ids: [B, L] BOS, prompt, "▁", action tokens, stop; right-padded with ``pad_token_id``.
            attention_mask: [B, L] 1 for real tokens, 0 for padding (default: all ones).
            pixel_values: [B, num_images * 3 * num_towers, H, W] channel-stacked images.
            labels: [B, L] ``IGNORE_INDEX`` except the action tokens and stop token. The action tokens' input
                embeddings are zeroed (their positions are read from the labels); without labels nothing is zeroed.
            proprio, proprio_projector: [B, proprio_dim] state and its projector; appended as one token after the
                patches when both are given.
            noisy_actions, noisy_action_projector: [B, chunk, action_dim] (diffusion) replace the action-slot
                embeddings by projected noisy actions.
            diffusion_timestep_embeddings: [B, 1, D] appended after the proprio token (diffusion).
            use_film: FiLM-condition the vision backbone on the mean prompt embedding (see ``enable_film``).
            return_lm_logits: False skips the LM head (``logits`` and ``loss`` are None); ours, for the action-head
                training paths, which never use them.
        """
        if input_ids is None or pixel_values is None:
            raise ValueError(
                "forward() needs input_ids and pixel_values; for text-only use, call vla.language_model directly."
            )
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"input_ids has batch size {input_ids.shape[0]} but pixel_values has {pixel_values.shape[0]}."
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        actions_mask = (
            get_actions_mask(labels, self.config.action_token_begin_idx)
            if labels is not None
            else torch.zeros_like(input_ids, dtype=torch.bool)
        )
        noisy_action_features = None
        if noisy_actions is not None:
            if noisy_action_projector is None or labels is None:
                raise ValueError("noisy_actions needs noisy_action_projector and labels (to locate the action slots).")
            batch_size = noisy_actions.shape[0]
            noisy_action_features = noisy_action_projector(noisy_actions.reshape(batch_size, -1, 1))  # [B, slots, D]

        token_embeddings = self.get_input_embeddings()(input_ids)  # [B, L, D]
        film_condition = self._film_condition(token_embeddings, actions_mask, use_film)
        prefix = self._prefix_embeddings(pixel_values, proprio, proprio_projector, film_condition)
        if diffusion_timestep_embeddings is not None:
            prefix = torch.cat([prefix, diffusion_timestep_embeddings.to(prefix.dtype)], dim=1)
        text_embeddings = self._action_slot_embeddings(token_embeddings, actions_mask, noisy_action_features)
        inputs_embeds, multimodal_mask, multimodal_labels = self._insert_prefix(
            text_embeddings, prefix, attention_mask, labels
        )
        output = self._run_language_model(
            inputs_embeds,
            multimodal_mask,
            multimodal_labels,
            use_cache,
            output_attentions,
            output_hidden_states,
            return_lm_logits,
        )
        result = PrismaticCausalLMOutputWithPast(
            loss=getattr(output, "loss", None),
            logits=getattr(output, "logits", None),
            past_key_values=output.past_key_values,
            hidden_states=output.hidden_states,
            attentions=output.attentions,
            projector_features=prefix,
        )
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        return result if return_dict else result.to_tuple()


class OpenVLAForActionPrediction(PrismaticForConditionalGeneration):
    """OpenVLA(-OFT): predicts a chunk of actions in one forward pass (L1 head, diffusion head or action tokens)."""

    config_class = OpenVLAConfig

    def __init__(self, config: OpenVLAConfig) -> None:
        super().__init__(config)
        self.norm_stats = config.norm_stats
        self.bins = np.linspace(-1, 1, config.n_action_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0
        self.vocab_size = config.base_vocab_size  # de-tokenisation ignores the padding rows of the vocabulary

    @staticmethod
    def _check_unnorm_key(norm_stats: dict[str, Any] | None, unnorm_key: str | None) -> str:
        """The statistics key to use: the only one if ``unnorm_key`` is None, else it or ``{unnorm_key}_no_noops``."""
        if not norm_stats:
            raise ValueError(
                "This model has no dataset statistics (norm_stats) to un-normalise actions with; load the "
                "checkpoint's dataset_statistics.json into vla.norm_stats (load_vla does this)."
            )
        if unnorm_key is None:
            if len(norm_stats) != 1:
                raise ValueError(f"The model knows several datasets; pass unnorm_key, one of {sorted(norm_stats)}.")
            return next(iter(norm_stats))
        for candidate in (unnorm_key, f"{unnorm_key}_no_noops"):
            if candidate in norm_stats:
                return candidate
        raise ValueError(
            f"unnorm_key={unnorm_key!r} (nor {unnorm_key + '_no_noops'!r}) is not among the dataset statistics "
            f"{sorted(norm_stats)}."
        )

    def get_action_stats(self, unnorm_key: str | None = None) -> dict[str, Any]:
        return self.norm_stats[self._check_unnorm_key(self.norm_stats, unnorm_key)]["action"]

    def get_action_dim(self, unnorm_key: str | None = None) -> int:
        return len(self.get_action_stats(unnorm_key)["min"])

    def _unnormalize_actions(self, normalized_actions: np.ndarray, unnorm_key: str | None = None) -> np.ndarray:
        return unnormalize(
            normalized_actions, self.get_action_stats(unnorm_key), self.config.action_proprio_normalization_type
        )

    def _decode_action_token_ids(self, token_ids: np.ndarray) -> np.ndarray:
        """Action token ids -> bin centres in [-1, 1] (non-action ids clamp to the edge bins, as upstream)."""
        bin_indices = np.clip(self.vocab_size - token_ids - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[bin_indices]

    def _prepare_action_query(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt ids -> (ids, mask, labels) of ``prompt + "▁" + action slots + stop``, as seen in training."""
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("predict_action needs unpadded prompts (all of one length); got a padded attention_mask.")
        batch_size = input_ids.shape[0]
        if not bool(torch.all(input_ids[:, -1] == EMPTY_TOKEN_ID)):
            input_ids = torch.cat([input_ids, input_ids.new_full((batch_size, 1), EMPTY_TOKEN_ID)], dim=1)
        num_slots = self.config.num_actions_chunk * self.config.action_dim
        slots = input_ids.new_full((batch_size, num_slots), ACTION_PLACEHOLDER_ID)
        stop = input_ids.new_full((batch_size, 1), STOP_INDEX)
        prompt_length = input_ids.shape[1]
        input_ids = torch.cat([input_ids, slots, stop], dim=1)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        labels[:, prompt_length:-1] = self.config.action_token_begin_idx + 1
        labels[:, -1] = STOP_INDEX
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        return input_ids, attention_mask, labels

    def _action_slots_forward(
        self,
        token_embeddings: torch.Tensor,
        actions_mask: torch.Tensor,
        prefix: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        noisy_action_features: torch.Tensor | None = None,
        return_lm_logits: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """One LLM pass; returns the final hidden states at the action slots [B, slots, D] and the LLM output
        (with ``logits`` only when ``return_lm_logits``: the action heads read hidden states alone)."""
        text_embeddings = self._action_slot_embeddings(token_embeddings, actions_mask, noisy_action_features)
        inputs_embeds, multimodal_mask, _ = self._insert_prefix(text_embeddings, prefix, attention_mask)
        output = self._run_language_model(
            inputs_embeds, multimodal_mask, output_hidden_states=True, return_lm_logits=return_lm_logits
        )
        hidden = gather_action_hidden_states(
            output.hidden_states[-1], labels, prefix.shape[1], self.config.action_token_begin_idx
        )
        return hidden, output

    def _denoise_actions(
        self,
        token_embeddings: torch.Tensor,
        actions_mask: torch.Tensor,
        prefix: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        action_head: DiffusionActionHead,
        noisy_action_projector: NoisyActionProjector,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse diffusion from Gaussian noise, one LLM pass per DDIM step; returns (actions, last hidden states)."""
        batch_size = prefix.shape[0]
        shape = (batch_size, action_head.num_actions_chunk, action_head.action_dim)
        actions = torch.randn(shape, device=prefix.device, dtype=prefix.dtype)
        hidden = None
        for timestep in action_head.noise_scheduler.timesteps:
            timestep_embedding = action_head.time_encoder(timestep.reshape(1).to(prefix.device, torch.float32))
            timestep_token = timestep_embedding.to(prefix.dtype).expand(batch_size, -1).unsqueeze(1)  # [B, 1, D]
            noisy_action_features = noisy_action_projector(actions.reshape(batch_size, -1, 1))  # [B, slots, D]
            hidden, _ = self._action_slots_forward(
                token_embeddings,
                actions_mask,
                torch.cat([prefix, timestep_token], dim=1),
                attention_mask,
                labels,
                noisy_action_features,
            )
            noise_pred = action_head.predict_noise(hidden)  # [B, chunk, action_dim]
            actions = action_head.noise_scheduler.step(noise_pred, timestep, actions)
        return actions, hidden

    @torch.no_grad()
    def predict_action(
        self,
        input_ids: torch.LongTensor,
        unnorm_key: str | None = None,
        proprio: torch.Tensor | np.ndarray | None = None,
        proprio_projector: ProprioProjector | None = None,
        action_head: nn.Module | None = None,
        noisy_action_projector: NoisyActionProjector | None = None,
        use_film: bool = False,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        do_sample: bool = False,
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Predict an action chunk in one pass (L1 head or action tokens) or by DDIM (diffusion head).

        Args:
            input_ids: [B, L] inference prompt ("In: What action should the robot take to {task}?\\nOut:"); the "▁"
                token is appended when missing. Prompts must be unpadded (batch 1, or equal lengths).
            unnorm_key: dataset whose statistics un-normalise the actions (falls back to ``{key}_no_noops``).
            proprio, proprio_projector: normalised state [B, proprio_dim] and its projector (proprio token).
            action_head: ``L1RegressionActionHead`` or ``DiffusionActionHead`` (the latter with
                ``noisy_action_projector``); without a head, actions are decoded from the argmax action tokens.
            pixel_values: [B, num_images * 6, H, W].
            do_sample: accepted for upstream call compatibility; sampling is not supported.

        Returns:
            (actions, actions_hidden_states): un-normalised actions as float64 numpy, [chunk, action_dim] for batch 1
            (upstream's shape) else [B, chunk, action_dim]; and the final hidden states at the action slots
            [B, chunk * action_dim, D].
        """
        if pixel_values is None:
            raise ValueError("predict_action needs pixel_values.")
        if do_sample:
            raise ValueError("predict_action is deterministic; do_sample=True is not supported.")
        use_diffusion = isinstance(action_head, DiffusionActionHead)
        if use_diffusion and noisy_action_projector is None:
            raise ValueError("A DiffusionActionHead needs noisy_action_projector.")
        input_ids, attention_mask, labels = self._prepare_action_query(input_ids, attention_mask)
        actions_mask = get_actions_mask(labels, self.config.action_token_begin_idx)
        token_embeddings = self.get_input_embeddings()(input_ids)  # [B, L, D]
        film_condition = self._film_condition(token_embeddings, actions_mask, use_film)
        prefix = self._prefix_embeddings(pixel_values, proprio, proprio_projector, film_condition)

        chunk_shape = (input_ids.shape[0], self.config.num_actions_chunk, self.config.action_dim)
        if use_diffusion:
            normalized, actions_hidden_states = self._denoise_actions(
                token_embeddings, actions_mask, prefix, attention_mask, labels, action_head, noisy_action_projector
            )
            normalized_actions = normalized.float().cpu().numpy()
        else:
            actions_hidden_states, output = self._action_slots_forward(
                token_embeddings, actions_mask, prefix, attention_mask, labels, return_lm_logits=action_head is None
            )
            if action_head is not None:
                normalized_actions = action_head.predict_action(actions_hidden_states).float().cpu().numpy()
            else:
                slot_logits = gather_action_hidden_states(
                    output.logits, labels, prefix.shape[1], self.config.action_token_begin_idx
                )  # [B, slots, V]
                token_ids = slot_logits.argmax(dim=-1).cpu().numpy()
                normalized_actions = self._decode_action_token_ids(token_ids)
        actions = self._unnormalize_actions(normalized_actions.reshape(chunk_shape), unnorm_key)
        return (actions[0] if actions.shape[0] == 1 else actions), actions_hidden_states
