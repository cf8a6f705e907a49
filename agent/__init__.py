"""Edge Agent: on-device deployment agent for NVIDIA Jetson."""

__version__ = "0.1.0"
