"""LIBERO simulator workers and the evaluation runner (``run_libero_eval.py``)."""
