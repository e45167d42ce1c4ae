"""I3AD: iterative image inpainting with a structural-similarity mask for anomaly detection."""

__version__ = "0.1.0"
