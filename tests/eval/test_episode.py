"""Episode semantics (wait steps, open-loop chunks, gripper post-processing, success, errors) on a scripted env."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.robot.libero.env_worker import EpisodeSettings, PolicyError, run_episode


class ScriptedEnv:
    """Stands in for a LIBERO env: records actions, reports success after ``succeed_after`` steps."""

    def __init__(self, succeed_after: int | None = None, fail_at: int | None = None):
        self.actions: list[list[float]] = []
        self.succeed_after, self.fail_at = succeed_after, fail_at

    def observation(self) -> dict[str, np.ndarray]:
        shade = np.uint8(len(self.actions) % 256)
        return {
            "agentview_image": np.full((32, 32, 3), shade, dtype=np.uint8),
            "robot0_eye_in_hand_image": np.zeros((32, 32, 3), dtype=np.uint8),
            "robot0_eef_pos": np.array([0.0, 0.0, float(len(self.actions))]),
            "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
            "robot0_gripper_qpos": np.array([0.04, -0.04]),
        }

    def step(self, action: list[float]) -> tuple[dict, float, bool, dict]:
        if self.fail_at is not None and len(self.actions) == self.fail_at:
            raise RuntimeError("MuJoCo instability")
        self.actions.append(list(action))
        done = self.succeed_after is not None and len(self.actions) >= self.succeed_after
        return self.observation(), float(done), done, {}


class CountingPolicy:
    """Chunk k holds actions whose first entry is 10 k + i (i = position in the chunk); gripper 'open' (1.0)."""

    def __init__(self, chunk: int = 8):
        self.chunk, self.queries = chunk, []

    def __call__(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        assert observation["full_image"].shape == (224, 224, 3) and observation["state"].shape == (8,)
        self.queries.append(observation["state"][2])  # env steps taken when queried
        actions = np.zeros((self.chunk, 7))
        actions[:, 0] = 10 * (len(self.queries) - 1) + np.arange(self.chunk)
        actions[:, -1] = 1.0
        return actions


def settings(max_steps: int = 20, num_open_loop_steps: int = 8, num_steps_wait: int = 10) -> EpisodeSettings:
    return EpisodeSettings("libero_spatial", "libero", num_steps_wait, max_steps, num_open_loop_steps, 7, 32, None)


def test_wait_steps_then_open_loop_chunks_with_processed_gripper() -> None:
    env, policy = ScriptedEnv(), CountingPolicy()
    outcome = run_episode(env, env.observation(), settings(max_steps=20), policy, keep_frames=True)
    assert (outcome.success, outcome.steps, outcome.error) == (False, 20, None)
    assert env.actions[:10] == [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]] * 10  # no-ops, gripper open
    assert policy.queries == [10, 18, 26]  # re-queried once every 8 actions
    executed = np.array(env.actions[10:])
    np.testing.assert_array_equal(
        executed[:, 0], [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 20, 21, 22, 23]
    )
    np.testing.assert_array_equal(executed[:, -1], -1.0)  # dataset 1 = open -> LIBERO -1 = open
    assert len(outcome.frames) == 20 and outcome.frames[0].shape == (32, 32, 3)
    assert outcome.final_state[2] == 30.0


def test_fewer_open_loop_steps_execute_the_start_of_each_chunk() -> None:
    env, policy = ScriptedEnv(), CountingPolicy()
    run_episode(env, env.observation(), settings(max_steps=7, num_open_loop_steps=3, num_steps_wait=0), policy, False)
    np.testing.assert_array_equal(np.array(env.actions)[:, 0], [0, 1, 2, 10, 11, 12, 20])


def test_success_ends_the_episode_at_once() -> None:
    env = ScriptedEnv(succeed_after=15)
    outcome = run_episode(env, env.observation(), settings(), CountingPolicy(), keep_frames=False)
    assert (outcome.success, outcome.steps, outcome.frames) == (True, 5, [])


def test_simulator_error_is_a_failed_episode_but_a_policy_error_stops_everything() -> None:
    env = ScriptedEnv(fail_at=12)
    outcome = run_episode(env, env.observation(), settings(), CountingPolicy(), keep_frames=False)
    assert (outcome.success, outcome.steps, outcome.error) == (False, 2, "RuntimeError: MuJoCo instability")

    def broken_policy(observation: dict[str, np.ndarray]) -> np.ndarray:
        raise PolicyError("policy returned an action chunk of shape (7,)")

    with pytest.raises(PolicyError, match="shape"):
        run_episode(ScriptedEnv(), ScriptedEnv().observation(), settings(), broken_policy, keep_frames=False)
