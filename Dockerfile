FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY common common
COPY producer producer
COPY workers workers
COPY models models
COPY migrations migrations
COPY inferq inferq
COPY ops ops
COPY bench bench
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 inferq \
    && mkdir -p /models && chown inferq /models
USER inferq
VOLUME ["/models"]
CMD ["inferq", "worker"]
