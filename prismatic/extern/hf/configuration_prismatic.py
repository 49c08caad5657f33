"""Upstream import path of the configurations; the code lives in ``prismatic.models.configuration_prismatic``."""

from prismatic.models.configuration_prismatic import OpenVLAConfig, PrismaticConfig

__all__ = ["OpenVLAConfig", "PrismaticConfig"]
