"""The proof format only: manifest (`format`: json + hashlib, no torch), safetensors/npy from one
dtype table, the checkpoint codec, the writer (taking host buffers: `host`), journal/resume and the
reader. Knows nothing of training or devices (device→host snapshots: `pol.prover.snapshot`)."""
