"""VLA-specific pieces shared by the model, the data pipeline and evaluation."""
