"""beam-image-labeller: label images with an image classifier on Apache Beam, one Parquet row per input."""

__version__ = "0.1.0"
