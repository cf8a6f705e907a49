"""Camera-pipeline preprocessing, split by path: geometry, the CPU path, the GPU path."""
