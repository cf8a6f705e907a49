"""The worker pool, split by role: workers, batching, postprocess hand-off, reorder."""
