"""inference: TODO."""
