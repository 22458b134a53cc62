"""inferq producer: ``from inferq import InferenceClient``. Must never import scikit-learn."""

from inferq.producer.client import InferenceClient
from inferq.producer.results import Result

__all__ = ["InferenceClient", "Result"]
