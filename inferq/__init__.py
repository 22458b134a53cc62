"""inferq: asynchronous batch inference workers for scikit-learn models.

Everything inferq installs lives under this one package. The public API::

    from inferq import InferenceClient, Result
    from inferq import InferqError, ModelNotFound, EnqueueError, DatabaseError, ...

Attributes are imported lazily so that ``import inferq`` (e.g. by the CLI or a worker) costs
nothing; the producer side never imports scikit-learn.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ArtifactMismatch",
    "BrokerUnavailable",
    "ConfigError",
    "ContractError",
    "DatabaseError",
    "DatabaseUnavailable",
    "EnqueueError",
    "InferenceClient",
    "InferqError",
    "InvalidInput",
    "InvalidName",
    "MissingColumns",
    "ModelNotFound",
    "ModelUnavailable",
    "NotAnEstimator",
    "Result",
    "ResultsTimeout",
    "SchemaNotReady",
    "Settings",
    "TooManyRows",
    "TransientError",
    "UnknownSettingWarning",
    "__version__",
]
# name -> module that defines it (PEP 562 lazy attributes); every error is in common.errors
_EXPORTS = {name: "inferq.common.errors" for name in __all__ if name[0].isupper()}
_EXPORTS.update(
    InferenceClient="inferq.producer.client",
    Result="inferq.producer.results",
    Settings="inferq.common.settings",
)

if TYPE_CHECKING:
    from inferq.common.errors import (
        ArtifactMismatch,
        BrokerUnavailable,
        ConfigError,
        ContractError,
        DatabaseError,
        DatabaseUnavailable,
        EnqueueError,
        InferqError,
        InvalidInput,
        InvalidName,
        MissingColumns,
        ModelNotFound,
        ModelUnavailable,
        NotAnEstimator,
        ResultsTimeout,
        SchemaNotReady,
        TooManyRows,
        TransientError,
        UnknownSettingWarning,
    )
    from inferq.common.settings import Settings
    from inferq.producer.client import InferenceClient
    from inferq.producer.results import Result


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'inferq' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
