"""The naive pattern users copy from tutorials, for comparison only (never used by inferq):
one Celery task per row, JSON arguments, a Redis result backend, one INSERT per row."""

import os
import warnings

import joblib
import numpy as np
import psycopg
from celery import Celery

warnings.filterwarnings("ignore")  # the tutorial passes lists to a model fitted on a DataFrame

app = Celery("naive", broker=os.environ["NAIVE_BROKER"], backend=os.environ["NAIVE_BROKER"])
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
model = joblib.load(os.environ["NAIVE_MODEL"])
_conn = None


@app.task(name="naive.predict")
def predict(row_id: str, features: list[float]) -> dict:
    """Score one row and INSERT it."""
    global _conn
    if _conn is None:
        _conn = psycopg.connect(os.environ["NAIVE_DB"], autocommit=True)
    proba = model.predict_proba(np.array([features]))[0]
    label = int(proba.argmax())
    _conn.execute(
        "INSERT INTO naive_predictions (id, label, score) VALUES (%s, %s, %s)",
        (row_id, label, float(proba[1])),
    )
    return {"label": label, "score": float(proba[1])}
