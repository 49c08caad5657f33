"""Configuration of pi0: PaliGemma (SigLIP + Gemma) with a Gemma action expert, trained by flow matching.

Defaults are the released pi0 (openpi ``pi0_config.py``; PaliGemma-3B ``gemma_2b`` + the ``gemma_300m`` expert).
The transformers configs of the three towers are derived from these fields, so one flat config file describes the
model, as lerobot's ``config.json`` does.
"""

from __future__ import annotations

from transformers import GemmaConfig, PaliGemmaConfig, PretrainedConfig, SiglipVisionConfig

TIME_SCHEDULES = ("openpi", "lerobot")
ACTION_LOSS_DIMS = ("padded", "real")
PARAM_DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
# openpi's camera keys, in prompt order.
IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


class Pi0Config(PretrainedConfig):
    """pi0's sizes and choices. Both Gemma towers share depth, head count, KV head count and head width, because
    every layer runs one attention over the concatenated prefix and suffix; only their widths and MLPs differ."""

    model_type = "pi0"

    def __init__(
        self,
        vocab_size: int = 257152,
        vision_hidden_size: int = 1152,
        vision_num_layers: int = 27,
        vision_num_heads: int = 16,
        vision_intermediate_size: int = 4304,
        image_size: int = 224,
        patch_size: int = 14,
        vlm_width: int = 2048,
        vlm_mlp_dim: int = 16384,
        expert_width: int = 1024,
        expert_mlp_dim: int = 4096,
        depth: int = 18,
        num_heads: int = 8,
        num_kv_heads: int = 1,
        head_dim: int = 256,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 10000.0,
        image_keys: tuple[str, ...] | list[str] = IMAGE_KEYS,
        tokenizer_max_length: int = 48,
        chunk_size: int = 50,
        max_state_dim: int = 32,
        max_action_dim: int = 32,
        action_dim: int = 32,
        action_loss_dims: str = "padded",
        num_inference_steps: int = 10,
        time_schedule: str = "openpi",
        min_period: float = 4e-3,
        max_period: float = 4.0,
        time_sampling_beta_alpha: float = 1.5,
        time_sampling_beta_beta: float = 1.0,
        time_sampling_scale: float = 0.999,
        time_sampling_offset: float = 0.001,
        param_dtype: str = "bfloat16",
        attention_implementation: str = "eager",
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.vision_hidden_size = vision_hidden_size
        self.vision_num_layers = vision_num_layers
        self.vision_num_heads = vision_num_heads
        self.vision_intermediate_size = vision_intermediate_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.vlm_width = vlm_width
        self.vlm_mlp_dim = vlm_mlp_dim
        self.expert_width = expert_width
        self.expert_mlp_dim = expert_mlp_dim
        self.depth = depth
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.image_keys = list(image_keys)
        self.tokenizer_max_length = tokenizer_max_length
        self.chunk_size = chunk_size
        self.max_state_dim = max_state_dim
        self.max_action_dim = max_action_dim
        # The embodiment's real action dims; "real" averages the action loss over these only (lerobot), "padded"
        # over all max_action_dim dims (openpi, SF-pi0), which also trains the padded dims to predict the noise.
        self.action_dim = action_dim
        self.action_loss_dims = action_loss_dims
        self.num_inference_steps = num_inference_steps
        # "openpi": t accumulated in float32 from 1 by dt = -1/steps (openpi and JAX openpi; the reference);
        # "lerobot": t = 1 + k dt computed in float64, then cast (moves sampled actions by about 1e-4).
        self.time_schedule = time_schedule
        self.min_period = min_period
        self.max_period = max_period
        self.time_sampling_beta_alpha = time_sampling_beta_alpha
        self.time_sampling_beta_beta = time_sampling_beta_beta
        self.time_sampling_scale = time_sampling_scale
        self.time_sampling_offset = time_sampling_offset
        # "bfloat16" is openpi's policy: the towers in bf16 except SigLIP's patch and position embeddings and every
        # Gemma norm weight; the five action heads stay float32.
        self.param_dtype = param_dtype
        self.attention_implementation = attention_implementation
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the field whose value pi0 cannot use."""
        choices = {
            "time_schedule": TIME_SCHEDULES,
            "action_loss_dims": ACTION_LOSS_DIMS,
            "param_dtype": PARAM_DTYPES,
            "attention_implementation": ATTENTION_IMPLEMENTATIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Pi0Config.{name}={getattr(self, name)!r}: expected one of {list(allowed)}")
        if not 0 < self.action_dim <= self.max_action_dim:
            raise ValueError(
                f"Pi0Config.action_dim={self.action_dim}: expected 1..max_action_dim ({self.max_action_dim})"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"Pi0Config.image_size={self.image_size}: expected a multiple of patch_size")

    @property
    def num_image_tokens(self) -> int:
        """Tokens per camera (256 for SigLIP So400m/14 at 224)."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_cameras(self) -> int:
        return len(self.image_keys)

    def _gemma_config(self, width: int, mlp_dim: int) -> GemmaConfig:
        return GemmaConfig(
            vocab_size=self.vocab_size,
            hidden_size=width,
            intermediate_size=mlp_dim,
            num_hidden_layers=self.depth,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            hidden_act="gelu_pytorch_tanh",
            hidden_activation="gelu_pytorch_tanh",
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            attention_bias=False,
        )

    def paligemma_config(self) -> PaliGemmaConfig:
        """The VLM: SigLIP without pooling head, a 1-layer projector to the LM width, the Gemma LM (head tied)."""
        vision = SiglipVisionConfig(
            hidden_size=self.vision_hidden_size,
            intermediate_size=self.vision_intermediate_size,
            num_hidden_layers=self.vision_num_layers,
            num_attention_heads=self.vision_num_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            layer_norm_eps=1e-6,
            hidden_act="gelu_pytorch_tanh",
            vision_use_head=False,
        )
        text = self._gemma_config(self.vlm_width, self.vlm_mlp_dim)
        return PaliGemmaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=self.vocab_size,
            vocab_size=self.vocab_size,
            projection_dim=self.vlm_width,
            hidden_size=self.vlm_width,
            tie_word_embeddings=True,
            attn_implementation=self.attention_implementation,
        )

    def expert_config(self) -> GemmaConfig:
        """The action expert: a Gemma whose input embedding is dropped (its LM head exists but is never used)."""
        config = self._gemma_config(self.expert_width, self.expert_mlp_dim)
        config.tie_word_embeddings = False
        return config
