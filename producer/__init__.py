"""inferq producer: ``from producer import InferenceClient``. Must never import scikit-learn."""

from producer.client import InferenceClient
from producer.results import Result

__all__ = ["InferenceClient", "Result"]
