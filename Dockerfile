# syntax=docker/dockerfile:1
#
# The capture-export operator image.
#
#   docker build -t capture-export:0.1.0 .
#   docker run --rm capture-export:0.1.0 --help
#
# Two stages: the first builds our wheel (with its one C extension, the native paths of JSON Lines, Parquet and
# privacy mode: gcc is installed in that stage only) and installs it with every dependency into a virtualenv
# (dependencies from binary wheels only); the second copies that virtualenv onto a clean slim Python, without the
# compiler.
# The final image runs as uid/gid 10001, writes nothing outside /tmp, $HOME and /data (the chart mounts
# emptyDirs there and a PVC on /data), so it runs with a read-only root filesystem under the restricted
# Pod Security profile.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The C compiler for our extension (hatch_build.py); this stage is thrown away.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Metadata and the build hook first (hatchling reads README.md for the long description), then the package.
COPY pyproject.toml README.md hatch_build.py ./
COPY operator ./operator
# The versions the README's test command passed with (its header says why): a dependency's new release cannot
# change the image until the constraints are refreshed and the tests pass again.
COPY scripts/constraints.txt /tmp/constraints.txt

# Build our wheel (the native JSON Lines, Parquet and privacy mode paths compiled in), then install it and its
# dependencies from binary wheels only, so a dependency that would need compiling fails the build instead of
# compiling in the image.
# The import check fails the build if the extension did not build (the hook would only warn), or if its seal
# check finds no SHA-256 in the libcrypto of this Python's hashlib (the final stage is the same Python).
# The parquet extra (pyarrow) is included so that `format: parquet` works in the shipped image.
# pip byte-compiles the installed modules here, so nothing needs writing at run time.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip install --only-binary=:all: -c /tmp/constraints.txt "$(ls /wheels/*.whl)[parquet]" \
 && pip check \
 && python -c "import capture_export.export._cbor_json as c; assert c.seals_valid([], bytes(64)), 'no SHA-256 found'" \
 && capture-export --help >/dev/null

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="capture-export" \
      org.opencontainers.image.description="Kubernetes operator that exports LLM gateway capture records to S3 exactly once" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed non-root identity (the chart's securityContext uses the same ids). /data is where the
# default SQLite capture store lives (a PVC in the chart); /home/capture is $HOME.
RUN groupadd --system --gid 10001 capture \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/capture --no-create-home \
            --shell /usr/sbin/nologin capture \
 && mkdir -p /data /home/capture \
 && chown 10001:10001 /data /home/capture

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/capture \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CAPTURE_EXPORT_STORE=/data/store.sqlite

USER 10001:10001
WORKDIR /home/capture
VOLUME ["/data"]
# 8080: liveness (GET /healthz); 8081: readiness (GET /readyz); 9090: Prometheus metrics (GET /metrics).
EXPOSE 8080 8081 9090

# `capture-export operator` by default; any other subcommand (seed, verify, cat, run) by passing it.
ENTRYPOINT ["capture-export"]
CMD ["operator", "--all-namespaces"]
