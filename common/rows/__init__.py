"""Typed rows: the input schema of a model version, caller rows coerced to it, the typed
columns on the wire, and the model input a worker builds from them. One place owns all of it
(producers, the coalescer, bulk runs, worker-side merging, dead letters and replay use it)."""
