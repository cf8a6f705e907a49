"""Explicit INT8 quantization: recipes, calibration ranges, Q/DQ insertion, node-error probe."""
