# syntax=docker/dockerfile:1.7
# Stile's image (docs/deploy.md). Build from the repository root:
#   docker build -t stile:0.1.0 .
#   docker run --rm -p 8080:8080 --read-only --tmpfs /tmp -v stile-data:/var/lib/stile \
#     -v "$PWD/deploy/docker/stile.yaml:/etc/stile/stile.yaml:ro" stile:0.1.0
# tests/deploy/test_image.py runs every RUN step of this file (absolute paths only through variables, so
# the test can put them under a temporary root), then the entry point as the USER below, read-only but
# for $STILE_DATA and $TMPDIR, and the HEALTHCHECK command against it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the wheel from this checkout, installed with its dependencies into a venv ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/stile \
    WHEELS=/wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
COPY examples/demo.yaml examples/demo.yaml
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip wheel --no-deps --wheel-dir "$WHEELS" . \
 && python -m venv "$VIRTUAL_ENV" \
 && "$VIRTUAL_ENV/bin/python" -m pip install "$WHEELS"/stile-*.whl \
 && "$VIRTUAL_ENV/bin/python" -m pip uninstall -y pip

# --- runtime: the venv only, a numeric non-root user, nothing written outside $STILE_DATA and $TMPDIR -------
FROM ${PYTHON_IMAGE} AS runtime
ARG STILE_UID=10001
ENV VIRTUAL_ENV=/opt/stile \
    PATH=/opt/stile/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STILE_DATA=/var/lib/stile \
    HOME=/var/lib/stile \
    XDG_STATE_HOME=/var/lib/stile \
    TMPDIR=/tmp \
    STILE_CONFIG=/etc/stile/stile.yaml \
    STILE_HOST=0.0.0.0 \
    STILE_PORT=8080 \
    STILE_LOG_LEVEL=info \
    STILE_WORKERS=
COPY --from=build /opt/stile /opt/stile
COPY deploy/docker/entrypoint.sh /usr/local/bin/stile-entrypoint
RUN mkdir -p "$(dirname "$STILE_CONFIG")" "$STILE_DATA" \
 && chown "$STILE_UID:$STILE_UID" "$STILE_DATA" \
 && chmod 0750 "$STILE_DATA"
USER ${STILE_UID}:${STILE_UID}
WORKDIR /var/lib/stile
VOLUME ["/var/lib/stile"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; sys.tracebacklimit = 0; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('STILE_PORT', '8080') + '/healthz', timeout=2)"]
ENTRYPOINT ["stile-entrypoint"]
CMD ["serve"]
