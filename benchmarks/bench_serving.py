"""The policy server against an in-process call: round-trip latency, and requests/s with and without batching.

    python benchmarks/bench_serving.py [--pretrained_checkpoint DIR] [--repeats 30] [--requests_per_client 12]

Without ``--pretrained_checkpoint`` a tiny random checkpoint is written to a temporary folder. Requests are
openpi's LIBERO observations (two 224 x 224 frames, 8-D state, one prompt) sent by our websocket client over
loopback.
- latency: ``predict_chunk`` in this process vs one client's round trip through the server, interleaved
  (A B A B ...); p50, p99 and min-max per variant;
- throughput: 1, 2 and 4 clients (threads, one connection each) sending requests back to back, batching on
  (``--max_batch_size 8 --batch_wait_ms 5``) and off (``--max_batch_size 1``), variants interleaved for ``--rounds``
  rounds; requests/s per round.
- load: ``--load_clients`` clients (at most 8) sending requests back to back for ``--load_seconds`` (at most 60)
  per phase, without and with one abusive client (30 MB frames: a 3000 x 3334 camera image, and a 2000-character
  prompt) sending alongside, phases interleaved for ``--rounds`` rounds; p50/p99 latency of the well-behaved clients'
  requests and the process's peak resident memory per phase (server and clients share this process). Everything
  runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

os.environ.setdefault("USE_TF", "0")  # transformers would import TensorFlow by itself

from experiments.robot.libero.config import GenerateConfig  # noqa: E402
from experiments.robot.serving.client import PolicyClient, PolicyServerError  # noqa: E402
from experiments.robot.serving.config import ServeConfig, build_server  # noqa: E402
from experiments.robot.serving.server import server_in_thread  # noqa: E402
from experiments.robot.vla_policy import VLAPolicy  # noqa: E402
from prismatic.testing.tiny_vla import save_tiny_vla_checkpoint  # noqa: E402

INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"
CLIENT_COUNTS = (1, 2, 4)
MAX_LOAD_CLIENTS, MAX_LOAD_SECONDS = 8, 60
ABUSIVE_IMAGE_SHAPE = (3000, 3334, 3)  # 30 MB, under the default 32 MiB message limit
ABUSIVE_PROMPT = ("pick up the bowl " * 200)[:2000]  # the longest prompt the server takes
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
TINY_STATS = {
    "libero_spatial_no_noops": {
        "action": {"q01": [-1.0] * 6 + [0.0], "q99": [1.0] * 7, "mask": [True] * 6 + [False]},
        "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8},
    }
}


def make_request(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/state": rng.uniform(-0.5, 0.5, 8),
        "prompt": INSTRUCTION,
    }


def as_observation(request: dict) -> dict:
    return {
        "full_image": request["observation/image"],
        "wrist_image": request["observation/wrist_image"],
        "state": request["observation/state"],
    }


def percentiles(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1000
    return (
        f"p50 {np.percentile(ms, 50):7.1f} ms  p99 {np.percentile(ms, 99):7.1f} ms  "
        f"(min {ms.min():.1f}, max {ms.max():.1f}, n={len(ms)})"
    )


def requests_per_second(port: int, num_clients: int, requests_per_client: int) -> float:
    clients = [PolicyClient(f"ws://127.0.0.1:{port}") for _ in range(num_clients)]
    requests = [make_request(index) for index in range(num_clients)]
    for client, request in zip(clients, requests, strict=True):
        client.infer(request)  # warm-up, connection set up

    def send(index: int) -> None:
        for _ in range(requests_per_client):
            clients[index].infer(requests[index])

    threads = [threading.Thread(target=send, args=(index,)) for index in range(num_clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    for client in clients:
        client.close()
    return num_clients * requests_per_client / elapsed


def resident_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


def load_phase(port: int, num_clients: int, seconds: float, abusive: bool) -> tuple[list[float], int, int]:
    """Latencies (s) of the well-behaved clients' requests, the peak resident bytes sampled every 10 ms, and the
    abusive client's answered requests, over ``seconds`` of ``num_clients`` clients sending back to back (and one
    abusive client alongside)."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    abusive_answers = [0]
    peak = [resident_bytes()]
    done = threading.Event()

    def well_behaved(index: int) -> None:
        client, request = PolicyClient(f"ws://127.0.0.1:{port}"), make_request(index)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            client.infer(request)
            latencies.append(time.perf_counter() - start)
        client.close()

    def abuser() -> None:
        rng = np.random.default_rng(99)
        request = {
            **make_request(99),
            "observation/image": rng.integers(0, 256, ABUSIVE_IMAGE_SHAPE, dtype=np.uint8),
            "prompt": ABUSIVE_PROMPT,
        }
        client = PolicyClient(f"ws://127.0.0.1:{port}")
        while time.perf_counter() < deadline:
            try:
                client.infer(request)
                abusive_answers[0] += 1
            except PolicyServerError:
                pass
        client.close()

    def sample_memory() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], resident_bytes())

    threads = [threading.Thread(target=well_behaved, args=(index,)) for index in range(num_clients)]
    threads += [threading.Thread(target=abuser)] if abusive else []
    sampler = threading.Thread(target=sample_memory)
    sampler.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    sampler.join()
    return latencies, peak[0], abusive_answers[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained_checkpoint", default="")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--requests_per_client", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--load_clients", type=int, default=2)
    parser.add_argument("--load_seconds", type=float, default=10.0)
    parser.add_argument("--skip_throughput", action="store_true", help="only latency and the load test")
    args = parser.parse_args()
    if not 1 <= args.load_clients <= MAX_LOAD_CLIENTS or not 0 < args.load_seconds <= MAX_LOAD_SECONDS:
        parser.error(f"--load_clients 1..{MAX_LOAD_CLIENTS} and --load_seconds up to {MAX_LOAD_SECONDS}")

    with ExitStack() as stack:
        checkpoint = args.pretrained_checkpoint
        if not checkpoint:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "tiny-libero-spatial"
            checkpoint = str(save_tiny_vla_checkpoint(folder, seed=0, norm_stats=TINY_STATS, with_heads=True))
        policy = VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=checkpoint))
        print(f"checkpoint {checkpoint} on {policy.device} ({policy.dtype})")
        ports = {
            batching: stack.enter_context(
                server_in_thread(
                    build_server(
                        ServeConfig(pretrained_checkpoint=checkpoint, port=0, max_batch_size=8 if batching else 1),
                        policy,
                    )
                )
            )
            for batching in (True, False)
        }

        request = make_request(0)
        client = PolicyClient(f"ws://127.0.0.1:{ports[False]}")
        for _ in range(2):  # warm-up
            policy.predict_chunk(as_observation(request), INSTRUCTION)
            client.infer(request)
        in_process, round_trip = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            policy.predict_chunk(as_observation(request), INSTRUCTION)
            in_process.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.infer(request)
            round_trip.append(time.perf_counter() - start)
        client.close()
        print("\nlatency of one request (interleaved)")
        print(f"  in-process predict_chunk  {percentiles(in_process)}")
        print(f"  server round trip         {percentiles(round_trip)}")
        overhead = (np.median(round_trip) - np.median(in_process)) * 1000
        print(f"  median overhead of the server: {overhead:.1f} ms")

        if not args.skip_throughput:
            print(f"\nthroughput, {args.requests_per_client} requests per client (requests/s per round, interleaved)")
            results: dict[tuple[int, bool], list[float]] = {}
            for _ in range(args.rounds):
                for num_clients in CLIENT_COUNTS:
                    for batching in (True, False):
                        rate = requests_per_second(ports[batching], num_clients, args.requests_per_client)
                        results.setdefault((num_clients, batching), []).append(rate)
            for num_clients in CLIENT_COUNTS:
                cells = []
                for batching in (True, False):
                    rates = results[(num_clients, batching)]
                    rates_text = " / ".join(f"{rate:6.1f}" for rate in rates)
                    cells.append(f"batching {'on ' if batching else 'off'} {rates_text}")
                print(f"  {num_clients} client(s): " + "   ".join(cells))

        print(
            f"\nload: {args.load_clients} client(s) for {args.load_seconds:.0f} s per phase, without and with one "
            f"abusive client ({ABUSIVE_IMAGE_SHAPE[0]} x {ABUSIVE_IMAGE_SHAPE[1]} frames, "
            f"{len(ABUSIVE_PROMPT)}-character prompt); phases interleaved"
        )
        print(f"  peak resident memory before: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
        for round_index in range(args.rounds):
            for abusive in (False, True):
                latencies, peak, answered = load_phase(ports[True], args.load_clients, args.load_seconds, abusive)
                label = "with abusive client   " if abusive else "without abusive client"
                extra = f", abusive requests answered {answered}" if abusive else ""
                print(
                    f"  round {round_index + 1} {label} {percentiles(latencies)}  "
                    f"peak RSS {peak / 2**20:.0f} MiB{extra}"
                )


if __name__ == "__main__":
    main()
