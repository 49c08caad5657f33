"""The OpenVLA-OFT / Spatial Forcing policy of the LIBERO evaluation; it lives in ``prismatic.policy.policy`` (one
policy object for evaluation, serving and probing) and is re-exported here for existing imports."""

from prismatic.policy.policy import VLAPolicy, policy_device, resolve_unnorm_key

__all__ = ["VLAPolicy", "policy_device", "resolve_unnorm_key"]
