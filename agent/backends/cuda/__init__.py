"""The CUDA layer: runtime (lazy import, streams, events), memory (buffers, copies), kernels
(NVRTC compile and launch), timing (stage times from timing events on a stream)."""
