import pytest

from prismatic.vla.constants import ALOHA, BRIDGE, LIBERO, NormalizationType, constants_for


@pytest.mark.parametrize(
    "name, expected",
    [
        ("libero_spatial_no_noops", LIBERO),
        ("libero_4_task_suites_no_noops", LIBERO),
        ("LIBERO_10", LIBERO),
        ("aloha_scoop_x_into_bowl", ALOHA),
        ("bridge_orig", BRIDGE),
        ("aloha_sf", constants_for("aloha_sf")),
    ],
)
def test_platform_is_chosen_from_the_dataset_name(name, expected):
    assert constants_for(name) == expected


def test_libero_geometry_matches_the_released_heads():
    assert (LIBERO.num_actions_chunk, LIBERO.action_dim, LIBERO.proprio_dim) == (8, 7, 8)
    assert LIBERO.num_action_tokens == 56
    assert LIBERO.action_proprio_normalization_type is NormalizationType.BOUNDS_Q99
    assert (ALOHA.num_actions_chunk, ALOHA.action_dim, constants_for("aloha_sf").num_actions_chunk) == (25, 14, 30)


def test_unknown_platform_names_the_input():
    with pytest.raises(ValueError, match="'kitchen_robot'"):
        constants_for("kitchen_robot")


def test_no_constant_depends_on_the_command_line(monkeypatch):
    import importlib

    import prismatic.vla.constants as constants

    monkeypatch.setattr("sys.argv", ["train.py", "--dataset_name", "aloha_scoop"])
    reloaded = importlib.reload(constants)
    assert reloaded.constants_for("libero_goal").num_actions_chunk == 8
