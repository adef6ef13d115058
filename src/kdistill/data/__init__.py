"""Data: where rows come from (Hub, files), how class names match, sampling, the prepared
splits on disk, and tokenised batches. Depends on nothing else in kdistill but errors/config."""
