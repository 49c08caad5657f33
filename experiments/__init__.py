"""Evaluation of robot policies (LIBERO simulation)."""
