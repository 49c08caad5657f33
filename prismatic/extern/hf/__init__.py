"""Re-exports of ``prismatic.models`` under upstream's ``prismatic.extern.hf`` module names."""
