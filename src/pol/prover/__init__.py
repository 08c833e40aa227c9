"""Proof creation: the Recorder for any loop, `fit` for the common loop, the built-in trainer."""
