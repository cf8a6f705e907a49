"""Power, thermal and memory monitoring (jtop, Jetson sysfs, plain hosts) and the governor."""
