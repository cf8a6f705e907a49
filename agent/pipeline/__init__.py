"""Camera pipeline: sources → bounded queues → worker pool → postprocess → sinks."""
