"""inferq: asynchronous batch inference workers for scikit-learn models."""

__version__ = "0.1.0"
