"""Upstream import paths kept for users' scripts."""
