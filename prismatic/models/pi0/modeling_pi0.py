"""pi0 on stock transformers: PaliGemma (SigLIP + Gemma) and a Gemma action expert joined layer by layer.

The towers are transformers' own ``PaliGemmaForConditionalGeneration`` and ``GemmaForCausalLM``, so the state dict
has the released names (openpi's ``PI0Pytorch``: ``paligemma_with_expert.{paligemma,gemma_expert}.*`` and five
action heads). Ours, because stock transformers cannot express them:

- the joint layer: each tower normalises and projects its own tokens, one attention (RoPE from the PaliGemma LM)
  runs over the concatenated sequence, and each tower applies its own output projection, norms and MLP;
- image tokens straight from SigLIP and the projector (stock ``get_image_features`` divides them by sqrt(width));
  only the language embeddings are scaled by sqrt(width) (stock ``GemmaModel`` would scale every input);
- the block mask (bidirectional prefix, state block, action block; padding masked as keys and as queries) with a
  finite mask value, positions counting valid tokens only;
- a prefix KV cache that each denoising step reads without growing it;
- the flow-matching loss and the Euler sampler (t = 1 is noise, t = 0 data).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import GemmaForCausalLM, PaliGemmaForConditionalGeneration
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.gemma.modeling_gemma import apply_rotary_pos_emb, eager_attention_forward

from prismatic.models.pi0.configuration_pi0 import Pi0Config

# openpi's additive mask value: finite, so a fully masked (padded) query row averages all keys instead of
# becoming NaN under an explicit softmax; such rows never reach a valid token.
MASK_VALUE = -2.3819763e38
# Under the bfloat16 policy these stay float32 (openpi ``gemma_pytorch.py``): SigLIP's patch and position
# embeddings and every Gemma RMSNorm weight.
FLOAT32_PARAMETERS = (
    "vision_model.embeddings.patch_embedding.",
    "vision_model.embeddings.position_embedding.",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "language_model.norm.weight",
    "gemma_expert.model.norm.weight",
)
ATTENTION_FUNCTIONS: dict[str, Callable[..., tuple[Tensor, Tensor | None]]] = {
    "eager": eager_attention_forward,
    "sdpa": sdpa_attention_forward,
}

KeyValues = list[tuple[Tensor, Tensor]]


def attention_mask_2d(pad_mask: Tensor, block_flags: Tensor) -> Tensor:
    """Which key each query may see ``[B, Q, K]`` (bool) for one sequence ``[B, L]`` of valid flags and block starts.

    A flag 1 starts a new block; token i sees token j iff j's block is not after i's and both are valid.
    """
    block = block_flags.cumsum(dim=-1)
    same_or_earlier = block[:, None, :] <= block[:, :, None]
    both_valid = pad_mask[:, None, :] & pad_mask[:, :, None]
    return same_or_earlier & both_valid


def additive_mask(visible: Tensor) -> Tensor:
    """``[B, Q, K]`` bool -> the float32 additive mask ``[B, 1, Q, K]`` (0 visible, ``MASK_VALUE`` hidden)."""
    return torch.where(visible[:, None], 0.0, MASK_VALUE).to(torch.float32)


def sinusoidal_time_embedding(time: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """``[B]`` -> ``[B, dim]``: sin then cos of 2 pi t / period, periods geometric from min to max, in float64."""
    if dim % 2:
        raise ValueError(f"The time embedding width must be even, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (1.0 / period * 2 * math.pi)[None, :] * time[:, None]  # [B, dim / 2], float64
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


def action_loss(loss_elementwise: Tensor, config: Pi0Config) -> Tensor:
    """The mean of ``(u_t - v_t)^2`` ``[B, H, max_action_dim]`` over all padded dims ("padded": openpi, SF-pi0) or
    the first ``action_dim`` ones ("real": lerobot)."""
    if config.action_loss_dims == "real":
        return loss_elementwise[..., : config.action_dim].mean()
    return loss_elementwise.mean()


@dataclass
class Pi0Observation:
    """One batch of what pi0 sees, batch first and padded as the model expects."""

    images: Tensor  # [B, N, 3, H, W] in [-1, 1], cameras in ``config.image_keys`` order
    image_masks: Tensor  # [B, N] bool, camera present
    lang_tokens: Tensor  # [B, L] int64, right-padded with 0
    lang_masks: Tensor  # [B, L] bool, True on real tokens
    state: Tensor  # [B, max_state_dim], zero-padded


@dataclass
class Pi0PrefixCache:
    """The prefix's keys and values per layer (after RoPE) and its valid-token mask ``[B, P]``."""

    key_values: KeyValues
    pad_mask: Tensor


@dataclass
class TowersOutput:
    outputs: list[Tensor | None]  # per tower, after its final norm
    key_values: KeyValues | None  # this pass's keys and values per layer, when asked for
    prefix_hidden_states: tuple[Tensor, ...] | None  # the prefix stream entering each layer, then the final norm's


@dataclass
class Pi0Output:
    loss: Tensor  # scalar action loss (over the dims ``config.action_loss_dims`` selects)
    loss_elementwise: Tensor  # [B, H, max_action_dim] (u_t - v_t)^2
    velocity: Tensor  # [B, H, max_action_dim] v_t
    # [B, P, D_vlm] per entry: index k is the residual stream entering LM layer k, the last is after the final norm
    prefix_hidden_states: tuple[Tensor, ...] | None = None


class PaliGemmaWithExpert(nn.Module):
    """The VLM and the action expert, run jointly layer by layer (either tower alone when the other has no tokens)."""

    def __init__(self, config: Pi0Config):
        super().__init__()
        self.config = config
        self.paligemma = PaliGemmaForConditionalGeneration(config.paligemma_config())
        self.gemma_expert = GemmaForCausalLM(config.expert_config())
        self.gemma_expert.model.embed_tokens = None
        self.attention = ATTENTION_FUNCTIONS[config.attention_implementation]
        self.gradient_checkpointing = False  # recompute each joint decoder layer in backward

    @property
    def language_model(self) -> nn.Module:
        return self.paligemma.model.language_model

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the Gemma layers compute in (their projection weights' dtype)."""
        return self.language_model.layers[0].self_attn.q_proj.weight.dtype

    def apply_dtype_policy(self, dtype: torch.dtype) -> None:
        """Cast the towers' parameters to ``dtype``, keeping ``FLOAT32_PARAMETERS`` in float32.

        Buffers are left alone, so RoPE's ``inv_freq`` stays float32 as in JAX openpi (openpi's PyTorch port casts
        the whole module and so rounds it to bf16).
        """
        for name, parameter in self.named_parameters():
            if not any(selector in name for selector in FLOAT32_PARAMETERS):
                parameter.data = parameter.data.to(dtype)

    def embed_images(self, images: Tensor) -> Tensor:
        """``[B, N, 3, H, W]`` in [-1, 1] -> image tokens ``[B, N * T, D_vlm]`` (not scaled)."""
        vision = self.paligemma.model.vision_tower.vision_model
        tokens = []
        # One camera at a time, as openpi runs SigLIP.
        for camera_images in images.unbind(dim=1):
            hidden = vision.embeddings(camera_images.to(vision.embeddings.patch_embedding.weight.dtype))  # [B, T, D]
            hidden = hidden.to(vision.post_layernorm.weight.dtype)
            hidden = vision.post_layernorm(vision.encoder(inputs_embeds=hidden).last_hidden_state)
            tokens.append(self.paligemma.model.multi_modal_projector(hidden))  # [B, T, D_vlm]
        return torch.cat(tokens, dim=1)

    def embed_language(self, token_ids: Tensor) -> Tensor:
        """``[B, L]`` -> ``[B, L, D_vlm]``, scaled by sqrt(D_vlm) (the only tokens that are)."""
        embeddings = self.language_model.embed_tokens(token_ids)
        return embeddings * math.sqrt(embeddings.shape[-1])

    def joint_layer(
        self,
        layers: list[nn.Module],
        attention_mask: Tensor,
        position_ids: Tensor,
        cached: tuple[Tensor, Tensor] | None,
        *streams: Tensor,
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """One decoder layer of the active towers (``layers``, one per stream): the new streams, and this pass's
        keys and values after RoPE (``cached`` keys and values are prepended for the attention only)."""
        queries, keys, values = [], [], []
        for layer, stream in zip(layers, streams, strict=True):
            normed = layer.input_layernorm(stream)
            shape = (*normed.shape[:-1], -1, layer.self_attn.head_dim)
            queries.append(layer.self_attn.q_proj(normed).view(shape).transpose(1, 2))
            keys.append(layer.self_attn.k_proj(normed).view(shape).transpose(1, 2))
            values.append(layer.self_attn.v_proj(normed).view(shape).transpose(1, 2))
        query, key, value = (torch.cat(parts, dim=2) for parts in (queries, keys, values))  # [B, heads, Q, d]
        cos, sin = self.language_model.rotary_emb(query, position_ids)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        all_keys, all_values = key, value
        if cached is not None:
            all_keys, all_values = torch.cat([cached[0], key], dim=2), torch.cat([cached[1], value], dim=2)
        attention_self = layers[0].self_attn
        attended, _ = self.attention(
            attention_self,
            query,
            all_keys,
            all_values,
            attention_mask.to(query.dtype) if self.attention is sdpa_attention_forward else attention_mask,
            scaling=attention_self.scaling,
            dropout=0.0,
        )
        attended = attended.reshape(*attended.shape[:2], -1)  # [B, Q, heads * d]
        outputs, start = [], 0
        for layer, stream in zip(layers, streams, strict=True):
            part = attended[:, start : start + stream.shape[1]]
            start += stream.shape[1]
            residual = stream + layer.self_attn.o_proj(part.to(layer.self_attn.o_proj.weight.dtype))
            mlp_input = layer.post_attention_layernorm(residual).to(layer.mlp.up_proj.weight.dtype)
            outputs.append(residual + layer.mlp(mlp_input))
        return outputs, key, value

    def forward(
        self,
        inputs_embeds: list[Tensor | None],
        attention_mask: Tensor,
        position_ids: Tensor,
        prefix_cache: KeyValues | None = None,
        return_key_values: bool = False,
        output_hidden_states: bool = False,
    ) -> TowersOutput:
        """Run ``[prefix, suffix]`` (either may be None) through all layers.

        ``attention_mask`` ``[B, 1, Q, K]`` is additive over the keys ``[cached prefix, prefix, suffix]``;
        ``position_ids`` ``[B, Q]``. ``prefix_cache`` keys and values are prepended to this pass's, and are not
        changed.
        """
        towers = (self.language_model, self.gemma_expert.model)
        active = [index for index, embeds in enumerate(inputs_embeds) if embeds is not None]
        streams = [embeds.to(self.compute_dtype) if embeds is not None else None for embeds in inputs_embeds]
        hidden_states = [] if output_hidden_states and streams[0] is not None else None
        key_values = [] if return_key_values else None
        for layer_index in range(self.config.depth):
            if hidden_states is not None:
                hidden_states.append(streams[0])
            layers = [towers[index].layers[layer_index] for index in active]
            cached = prefix_cache[layer_index] if prefix_cache is not None else None
            step = partial(self.joint_layer, layers, attention_mask, position_ids, cached)
            inputs = [streams[index] for index in active]
            if self.gradient_checkpointing and torch.is_grad_enabled():
                outputs, key, value = checkpoint(step, *inputs, use_reentrant=False)
            else:
                outputs, key, value = step(*inputs)
            for index, output in zip(active, outputs, strict=True):
                streams[index] = output
            if key_values is not None:
                key_values.append((key, value))
        outputs = [towers[index].norm(stream) if stream is not None else None for index, stream in enumerate(streams)]
        if hidden_states is not None:
            hidden_states.append(outputs[0])
        return TowersOutput(outputs, key_values, tuple(hidden_states) if hidden_states is not None else None)


class Pi0Model(nn.Module):
    """pi0: a ``Pi0Observation`` (images, prompt, state) in; a chunk of ``chunk_size`` actions ``[B, H,
    max_action_dim]`` (zero-padded past the embodiment's dims) out."""

    def __init__(self, config: Pi0Config):
        super().__init__()
        self.config = config
        self.paligemma_with_expert = PaliGemmaWithExpert(config)
        width = config.expert_width
        self.state_proj = nn.Linear(config.max_state_dim, width)
        self.action_in_proj = nn.Linear(config.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, config.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * width, width)
        self.action_time_mlp_out = nn.Linear(width, width)
        if config.param_dtype == "bfloat16":
            self.paligemma_with_expert.apply_dtype_policy(torch.bfloat16)

    def enable_gradient_checkpointing(self, include_vision: bool = False) -> None:
        """Recompute each joint decoder layer (PaliGemma LM and action expert) in backward, and with
        ``include_vision`` each SigLIP encoder layer."""
        self.paligemma_with_expert.gradient_checkpointing = True
        if include_vision:
            vision_tower = self.paligemma_with_expert.paligemma.model.vision_tower
            vision_tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def fsdp_units(self) -> list[nn.Module]:
        """FSDP's units (``fully_shard`` each): every SigLIP encoder layer and, in each decoder layer of both Gemma
        towers, the four attention projections and the MLP. pi0 never calls a decoder layer's own forward (the joint
        layer calls its parts), and the prefix's keys and values also carry the expert's gradients, so each part is
        a unit of its own: its output's gradient is what gathers it again in backward. The norms, embeddings and
        heads stay with the root unit."""
        towers = self.paligemma_with_expert
        units: list[nn.Module] = list(towers.paligemma.model.vision_tower.vision_model.encoder.layers)
        for tower in (towers.language_model, towers.gemma_expert.model):
            for layer in tower.layers:
                attention = layer.self_attn
                units += [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj, layer.mlp]
        return units

    # --- Embeddings ------------------------------------------------------------------------------------------------
    def embed_prefix(self, observation: Pi0Observation) -> tuple[Tensor, Tensor, Tensor]:
        """Image tokens of every camera, then the language tokens: embeddings ``[B, P, D_vlm]``, valid mask
        ``[B, P]`` and block flags ``[B, P]`` (all 0: the prefix is bidirectional)."""
        images, image_masks = observation.images, observation.image_masks
        if images.dim() != 5 or image_masks.shape != images.shape[:2]:
            raise ValueError(
                f"images must be [B, N, 3, H, W] with image_masks [B, N]; got {tuple(images.shape)} and "
                f"{tuple(image_masks.shape)}"
            )
        image_tokens = self.paligemma_with_expert.embed_images(images)
        language_tokens = self.paligemma_with_expert.embed_language(observation.lang_tokens)
        embeds = torch.cat([image_tokens, language_tokens.to(image_tokens.dtype)], dim=1)
        image_pad = image_masks.bool().repeat_interleave(self.config.num_image_tokens, dim=1)
        pad_mask = torch.cat([image_pad, observation.lang_masks.bool()], dim=1)
        return embeds, pad_mask, torch.zeros_like(pad_mask, dtype=torch.long)

    def embed_suffix(self, state: Tensor, noisy_actions: Tensor, time: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The state token, then one token per action (fused with the time embedding): ``[B, 1 + H, D_expert]``,
        valid mask and block flags (1 for the state, 1 then 0s for the actions)."""
        state_token = self.state_proj(state.to(self.state_proj.weight.dtype))[:, None]  # [B, 1, D]
        time_embedding = sinusoidal_time_embedding(
            time, self.config.expert_width, self.config.min_period, self.config.max_period
        ).to(time.dtype)
        action_tokens = self.action_in_proj(noisy_actions.to(self.action_in_proj.weight.dtype))  # [B, H, D]
        time_tokens = time_embedding[:, None].expand_as(action_tokens).to(action_tokens.dtype)
        fused = self.action_time_mlp_in(torch.cat([action_tokens, time_tokens], dim=2))
        action_tokens = self.action_time_mlp_out(F.silu(fused))
        embeds = torch.cat([state_token, action_tokens], dim=1)
        batch, length = embeds.shape[:2]
        pad_mask = torch.ones(batch, length, dtype=torch.bool, device=embeds.device)
        block_flags = torch.zeros(batch, length, dtype=torch.long, device=embeds.device)
        block_flags[:, :2] = 1
        return embeds, pad_mask, block_flags

    def velocity(self, suffix_output: Tensor) -> Tensor:
        """The action expert's last ``chunk_size`` outputs -> velocities ``[B, H, max_action_dim]`` (float32)."""
        return self.action_out_proj(suffix_output[:, -self.config.chunk_size :].to(self.action_out_proj.weight.dtype))

    # --- Training --------------------------------------------------------------------------------------------------
    def sample_time(self, batch_size: int, device: torch.device) -> Tensor:
        """Training times ``[B]``: Beta(alpha, beta) scaled into [offset, offset + scale]."""
        beta = torch.distributions.Beta(
            torch.tensor(self.config.time_sampling_beta_alpha, device=device),
            torch.tensor(self.config.time_sampling_beta_beta, device=device),
        )
        return beta.sample((batch_size,)) * self.config.time_sampling_scale + self.config.time_sampling_offset

    def forward(
        self,
        observation: Pi0Observation,
        actions: Tensor,
        noise: Tensor | None = None,
        time: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> Pi0Output:
        """Flow-matching loss at ``x_t = t noise + (1 - t) actions`` against ``u_t = noise - actions``; ``noise``
        and ``time`` ``[B]`` are drawn when not given."""
        actions = actions.float()
        noise = torch.randn_like(actions) if noise is None else noise
        time = self.sample_time(actions.shape[0], actions.device) if time is None else time
        t = time[:, None, None]
        noisy_actions = t * noise + (1 - t) * actions
        target = noise - actions
        prefix, prefix_pad, prefix_flags = self.embed_prefix(observation)
        suffix, suffix_pad, suffix_flags = self.embed_suffix(observation.state, noisy_actions, time)
        pad_mask = torch.cat([prefix_pad, suffix_pad], dim=1)
        mask = additive_mask(attention_mask_2d(pad_mask, torch.cat([prefix_flags, suffix_flags], dim=1)))
        towers = self.paligemma_with_expert(
            [prefix, suffix], mask, pad_mask.cumsum(dim=1) - 1, output_hidden_states=output_hidden_states
        )
        velocity = self.velocity(towers.outputs[1])
        loss_elementwise = F.mse_loss(target, velocity, reduction="none")
        loss = action_loss(loss_elementwise, self.config)
        return Pi0Output(loss, loss_elementwise, velocity, towers.prefix_hidden_states)

    # --- Sampling --------------------------------------------------------------------------------------------------
    def prefix_cache(self, observation: Pi0Observation) -> Pi0PrefixCache:
        """Run the prefix once through the VLM alone and keep its keys and values."""
        prefix, pad_mask, block_flags = self.embed_prefix(observation)
        mask = additive_mask(attention_mask_2d(pad_mask, block_flags))
        towers = self.paligemma_with_expert([prefix, None], mask, pad_mask.cumsum(dim=1) - 1, return_key_values=True)
        return Pi0PrefixCache(towers.key_values, pad_mask)

    def denoise_step(self, state: Tensor, cache: Pi0PrefixCache, noisy_actions: Tensor, time: Tensor) -> Tensor:
        """The velocity ``[B, H, max_action_dim]`` at ``noisy_actions`` and times ``[B]``, the expert alone over the
        cached prefix; suffix positions continue from the number of valid prefix tokens."""
        suffix, suffix_pad, suffix_flags = self.embed_suffix(state, noisy_actions, time)
        batch, suffix_length = suffix_pad.shape
        sees_prefix = cache.pad_mask[:, None, :].expand(batch, suffix_length, cache.pad_mask.shape[1])
        visible = torch.cat([sees_prefix, attention_mask_2d(suffix_pad, suffix_flags)], dim=2)
        positions = cache.pad_mask.sum(dim=-1, keepdim=True) + suffix_pad.cumsum(dim=1) - 1
        towers = self.paligemma_with_expert(
            [None, suffix], additive_mask(visible), positions, prefix_cache=cache.key_values
        )
        return self.velocity(towers.outputs[1])

    def sampling_times(self, num_steps: int, schedule: str, device: torch.device) -> list[Tensor]:
        """The float32 times of the Euler steps, from 1 down by 1 / num_steps.

        "openpi" accumulates t in float32 while t >= -dt / 2 (1.0, 0.89999998, ..., 0.09999993); "lerobot" casts
        1 + k dt, computed in float64, to float32.
        """
        step = -1.0 / num_steps
        if schedule == "lerobot":
            return [torch.tensor(1.0 + k * step, dtype=torch.float32, device=device) for k in range(num_steps)]
        if schedule != "openpi":
            raise ValueError(f"Unknown time schedule {schedule!r}: expected 'openpi' or 'lerobot'")
        dt = torch.tensor(step, dtype=torch.float32, device=device)
        time = torch.tensor(1.0, dtype=torch.float32, device=device)
        times = []
        while time >= -dt / 2:
            times.append(time)
            time = time + dt
        return times

    @torch.no_grad()
    def sample_actions(
        self,
        observation: Pi0Observation,
        noise: Tensor | None = None,
        num_steps: int | None = None,
        time_schedule: str | None = None,
    ) -> Tensor:
        """Euler integration of the velocity from ``noise`` (t = 1) to actions ``[B, H, max_action_dim]`` (t = 0)."""
        num_steps = num_steps or self.config.num_inference_steps
        state = observation.state
        batch = state.shape[0]
        if noise is None:
            noise = torch.randn(batch, self.config.chunk_size, self.config.max_action_dim, device=state.device)
        cache = self.prefix_cache(observation)
        dt = torch.tensor(-1.0 / num_steps, dtype=torch.float32, device=state.device)
        actions = noise.float()
        for time in self.sampling_times(num_steps, time_schedule or self.config.time_schedule, state.device):
            actions = actions + dt * self.denoise_step(state, cache, actions, time.expand(batch))
        return actions
