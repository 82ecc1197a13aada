"""Build-time model tooling and the shipped model files (not part of the wheel)."""
