"""Parallel decoding (OpenVLA-OFT) vs token-by-token autoregressive decoding (OpenVLA) of the same action chunk.

    python benchmarks/bench_parallel_decoding.py [--preset tiny|full] [--device cpu|cuda] [--repeats 5]

Both decoders start from the same images, proprio and prompt and produce the chunk's 56 action tokens:
- parallel: one pass over ``[BOS, patches, proprio, prompt, "▁", 56 empty slots, stop]`` with bidirectional
  attention (``predict_action`` on its action-token path);
- autoregressive: a causal prefill of ``[BOS, patches, proprio, prompt, "▁"]`` and then 56 cached one-token steps,
  each feeding back the greedy token.
Each figure is the median of ``--repeats`` timed runs after one warm-up; the ratio is measured in one run.
``--preset full`` builds openvla-7b (random weights, bf16) and needs a GPU with about 20 GB free.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prismatic.models import OpenVLAForActionPrediction, ProprioProjector
from prismatic.models.modeling_prismatic import EMPTY_TOKEN_ID
from prismatic.models.presets import openvla_7b_config
from prismatic.testing.tiny_vla import tiny_proprio_projector, tiny_training_batch, tiny_vla_config

NUM_PROMPT_TOKENS = 20


@torch.no_grad()
def decode_autoregressively(
    vla: OpenVLAForActionPrediction,
    prompt_ids: torch.Tensor,
    pixel_values: torch.Tensor,
    proprio: torch.Tensor,
    proprio_projector: ProprioProjector,
    num_tokens: int,
) -> torch.Tensor:
    """Greedy token-by-token decoding with a KV cache (causal attention): [1, L] prompt -> [1, num_tokens] ids."""
    embed = vla.get_input_embeddings()
    prefix = vla.projector(vla.vision_backbone(pixel_values))  # [1, n_img * P, D]
    proprio_token = proprio_projector(proprio).unsqueeze(1)  # [1, 1, D]
    prompt_embeddings = embed(prompt_ids)  # [1, L, D]
    sequence = torch.cat([prompt_embeddings[:, :1], prefix, proprio_token, prompt_embeddings[:, 1:]], dim=1)
    output = vla.language_model(inputs_embeds=sequence, use_cache=True)
    tokens = []
    for _ in range(num_tokens):
        next_token = output.logits[:, -1].argmax(dim=-1, keepdim=True)  # [1, 1]
        tokens.append(next_token)
        output = vla.language_model(input_ids=next_token, past_key_values=output.past_key_values, use_cache=True)
    return torch.cat(tokens, dim=1)


def median_seconds(run, device: torch.device, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num_images", type=int, default=2)
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.preset == "full" else torch.float32
    config = openvla_7b_config() if args.preset == "full" else tiny_vla_config()
    config.norm_stats = {"bench": {"action": {"q01": [-1.0] * config.action_dim, "q99": [1.0] * config.action_dim}}}
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with device:
        vla = OpenVLAForActionPrediction(config).eval()
        proprio_projector = tiny_proprio_projector(config).eval()
    torch.set_default_dtype(default_dtype)
    vla.set_num_images_in_input(args.num_images)

    batch = tiny_training_batch(config, [NUM_PROMPT_TOKENS], num_images=args.num_images)
    prompt_ids = torch.cat([batch["input_ids"][:, : NUM_PROMPT_TOKENS + 1], torch.tensor([[EMPTY_TOKEN_ID]])], dim=1)
    prompt_ids = prompt_ids.to(device)
    pixel_values = batch["pixel_values"].to(device, dtype)
    proprio = batch["proprio"].to(device, dtype)
    num_tokens = config.num_actions_chunk * config.action_dim

    def parallel() -> None:
        vla.predict_action(
            input_ids=prompt_ids, pixel_values=pixel_values, proprio=proprio, proprio_projector=proprio_projector
        )

    def autoregressive() -> None:
        decode_autoregressively(vla, prompt_ids, pixel_values, proprio, proprio_projector, num_tokens)

    parallel_seconds = median_seconds(parallel, device, args.repeats)
    autoregressive_seconds = median_seconds(autoregressive, device, args.repeats)
    print(f"preset={args.preset} device={device} dtype={dtype} images={args.num_images} action_tokens={num_tokens}")
    print(f"parallel decoding (1 pass):            {parallel_seconds * 1e3:9.1f} ms per chunk")
    print(f"autoregressive decoding ({num_tokens} steps):   {autoregressive_seconds * 1e3:9.1f} ms per chunk")
    print(f"speed-up (autoregressive / parallel):  {autoregressive_seconds / parallel_seconds:9.2f}x")


if __name__ == "__main__":
    main()
