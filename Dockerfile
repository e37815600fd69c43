# hft-executor worker image: `docker build -t hft-executor .`; run as `docker run hft-executor worker`.
FROM python:3.11-slim

# No .pyc files in the image layers, unbuffered logs straight to `docker logs`, no pip cache.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Copy only what the wheel is built from (pyproject.toml, its readme and every package in its
# [tool.setuptools] packages), never `COPY . .`: the build context can hold .venv/, .data/ and
# secrets/wallets/, and wallet keys must not end up in a layer. tests/test_image.py builds and runs the
# wheel from exactly these COPY lines, and fails when a package pyproject lists has none.
COPY pyproject.toml README.md ./
COPY settings/ settings/
COPY localnet/ localnet/
COPY workflows/ workflows/
COPY activities/ activities/
COPY executor/ executor/
COPY worker/ worker/
COPY devtools/ devtools/
COPY bench/ bench/
COPY chaos/ chaos/
COPY venue/ venue/

# Runtime dependencies only (no [dev] extra); the source tree is not needed once installed.
RUN pip install . && rm -rf /app/*

# Non-root. The UID is fixed so wallet key files (mode 0600, refused otherwise) can be chowned to it on the
# host: `chown 10001 secrets/wallets/*.json && chmod 600 secrets/wallets/*.json`.
RUN groupadd --system --gid 10001 hft && \
    useradd --system --uid 10001 --gid hft --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin hft
USER 10001:10001

# Prometheus metrics (METRICS_PORT).
EXPOSE 9464

ENTRYPOINT ["hft-executor"]
CMD ["worker"]
