"""On-disk proof format: writer, reader, commitments. Knows nothing of training."""
