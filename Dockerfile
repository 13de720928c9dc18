# syntax=docker/dockerfile:1
#
# Tahsilat: one image for every service and role.
#
#   docker build -t tahsilat:0.1.0 .
#   docker run --rm tahsilat:0.1.0                               # prints usage
#   docker run --rm -e DATABASE_URL=... tahsilat:0.1.0 python -m services.invoicing migrate
#
# The build copies only the lock file, pyproject.toml and the three packages (shared, services, tahsilat),
# so the local .venv, .git and tests never reach the build stage's layers.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------
# build: resolve and install the project and its dependencies into /opt/venv
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler only in this stage, for any dependency that has no wheel for this platform
# (unpinned: Debian's build-essential for the base image's release is what we want).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The runtime dependencies exactly as locked, each checked against its hash (no dev or local-only
# packages: no test tools, no embedded broker or PostgreSQL); then the project without resolving.
COPY requirements/runtime.lock ./requirements/
RUN pip install --require-hashes -r requirements/runtime.lock

# README.m[d]: copied when present (pyproject names it), no error when it is not.
COPY pyproject.toml README.m[d] ./
COPY shared ./shared
COPY services ./services
COPY tahsilat ./tahsilat

# pip compiles the bytecode here, so the read-only containers never need to.
RUN pip install --no-deps . \
 && python -c "import shared, services, tahsilat"

# ---------------------------------------------------------------------------------------
# runtime: slim, non-root, no compiler, no sources beyond the installed packages
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="tahsilat" \
      org.opencontainers.image.description="Event-driven accounts-receivable collections platform" \
      org.opencontainers.image.version="0.1.0"

# UID/GID 10001 match runAsUser in deploy/k8s and the compose file.
ARG APP_UID=10001
ARG APP_GID=10001
RUN groupadd --system --gid ${APP_GID} tahsilat \
 && useradd --system --uid ${APP_UID} --gid ${APP_GID} --home-dir /var/lib/tahsilat \
        --shell /usr/sbin/nologin tahsilat \
 && install -d -o ${APP_UID} -g ${APP_GID} -m 0750 /var/lib/tahsilat

# Pango and a font with Latin, Turkish, Czech and Persian glyphs: WeasyPrint renders the legal
# case file as PDF with them.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/venv /opt/venv

# HTTP_HOST=0.0.0.0 so the port is reachable from outside the container;
# the services' own default (127.0.0.1) suits a developer's machine, not a pod.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HTTP_HOST=0.0.0.0 \
    LOG_FORMAT=json \
    LOG_LEVEL=info

RUN mkdir -p /usr/local/share/tahsilat && printf '%s\n' \
    'Tahsilat accounts-receivable platform: one image, many roles. Run one of:' \
    '' \
    '  python -m services.<service> serve      start a service (roles from ROLES: api, worker or all)' \
    '  python -m services.<service> migrate    apply the migrations to its own database, exit' \
    '  python -m services.risk stream          the risk stream worker (faust)' \
    '  python -m tahsilat.sinks --smtp-port 2525 --http-port 8025 --host 0.0.0.0' \
    '                                          SMTP and SMS (HTTP POST /sms) sinks for local runs' \
    '' \
    '  <service> is one of: invoicing (8001), dunning (8002), risk (8003), notifier (8004)' \
    '' \
    'Environment: DATABASE_URL (one database per service), KAFKA_BOOTSTRAP_SERVERS, TOPIC_PREFIX,' \
    '             HTTP_HOST, HTTP_PORT, ROLES, LOG_LEVEL, LOG_FORMAT;' \
    '             notifier also SMTP_HOST, SMTP_PORT, SMS_URL, PUBLIC_BASE_URL.' \
    > /usr/local/share/tahsilat/USAGE

WORKDIR /var/lib/tahsilat
USER 10001:10001

EXPOSE 8001 8002 8003 8004

# No HEALTHCHECK here: the probe differs per role (HTTP for serve, none for migrate),
# so docker-compose.yml and deploy/k8s declare it per service.
CMD ["cat", "/usr/local/share/tahsilat/USAGE"]
