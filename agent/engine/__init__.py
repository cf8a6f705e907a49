"""Model bundle -> validated artifact: prepare, calibrate, quantize, build, validate, cache."""
