"""Policy wrappers, observation preprocessing and result handling for robot evaluation."""
