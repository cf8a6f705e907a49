"""The validation gate: a candidate engine serves only if it agrees with the float reference."""
