"""Operating inferq: Flower launcher, Prometheus exporter and the scale-out signal.

Logic only; the commands (`inferq flower`, `inferq metrics`, `inferq scale`) are thin
wrappers in ``inferq/cli_ops.py``.
"""
