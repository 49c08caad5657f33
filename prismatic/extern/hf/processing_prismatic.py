"""Upstream import path of the processors; the code lives in ``prismatic.models.processing_prismatic``."""

from prismatic.models.processing_prismatic import PrismaticImageProcessor, PrismaticProcessor

__all__ = ["PrismaticImageProcessor", "PrismaticProcessor"]
