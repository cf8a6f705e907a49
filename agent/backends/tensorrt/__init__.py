"""TensorRT backend, split by concern: loader (lazy import, loaders), plan (capabilities, build
plan), network (ONNX parse, profile, builder config), build, runner, inspect, backend (facade)."""
