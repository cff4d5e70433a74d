# syntax=docker/dockerfile:1
# pgparent: per-parent-tag session metrics and a runaway-group watchdog for PostgreSQL.
# The base is an argument so that builds without registry access can use a locally made Python image.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
RUN python3 -m venv /opt/pgparent
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN /opt/pgparent/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/pgparent/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="pgparent" \
      org.opencontainers.image.description="Per-parent-tag session metrics and a runaway-group watchdog for PostgreSQL"
RUN groupadd --system --gid 10187 pgparent \
    && useradd --system --uid 10187 --gid pgparent --no-create-home --shell /usr/sbin/nologin pgparent
COPY --from=build /opt/pgparent /opt/pgparent
COPY rules.yaml /etc/pgparent/rules.yaml
ENV PATH=/opt/pgparent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10187:10187
EXPOSE 10187
# Liveness: the poll loop is ticking (a database outage is pgparent_up 0, not an unhealthy container).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:10187/healthz', timeout=4); sys.exit(0)"]
# pgparent is PID 1: it installs its own SIGTERM/SIGINT handlers and stops within 2 s, so no init shim is needed.
ENTRYPOINT ["pgparent"]
CMD ["run", "--config.file", "/etc/pgparent/rules.yaml"]
