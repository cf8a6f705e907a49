"""Camera and video sources, split by role."""
