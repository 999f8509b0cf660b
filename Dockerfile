# bambid in a container: `twist bambid` in the foreground as the unprivileged
# bambid user, listening on port 6969 of every container interface.
#   docker build -t bambid .
#   docker run -d --name bambid -p 127.0.0.1:6969:6969 -v bambid-data:/var/lib/bambid bambid
# Configure it with BAMBID_<SECTION>_<KEY> variables (etc/bambid.toml.example), or
# mount a file and add `--config /etc/bambid/bambid.toml` to the command.
# deploy/compose.yaml runs it with Kokoro-FastAPI, MongoDB and Redis.

# --- build: the package and its dependencies in a virtual environment ----------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
# PIP_CONSTRAINT, not -c: the constraint (setuptools<81) must reach the isolated
# build of xstatic-bootstrap's source package too (see README.md). Then write
# Twisted's plugin cache, which the bambid user could not write later.
RUN python -m venv /opt/bambid/venv \
 && PIP_CONSTRAINT=/src/constraints.txt /opt/bambid/venv/bin/pip install /src \
 && /opt/bambid/venv/bin/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'

# --- run -----------------------------------------------------------------------
FROM python:3.11-slim-bookworm
# espeak-ng speaks when no Kokoro is configured (and when Kokoro fails); ffmpeg
# converts its WAV to voice.format (mp3).
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng ffmpeg \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --user-group --home-dir /var/lib/bambid --shell /usr/sbin/nologin bambid \
 && mkdir -p /var/lib/bambid/var \
 && chown -R bambid:bambid /var/lib/bambid \
 && chmod 0750 /var/lib/bambid
COPY --from=build /opt/bambid/venv /opt/bambid/venv
ENV PATH=/opt/bambid/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER bambid
# Data (SQLite under var/, the audio cache var/tts-cache, the manhole host key)
# lives under the working directory: keep it on a volume.
WORKDIR /var/lib/bambid
VOLUME ["/var/lib/bambid"]
EXPOSE 6969

# 503 (storage down) and a refused connection both make urlopen raise: unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6969/health/api', timeout=5)"]

# SIGTERM: stop listening, close WebSockets with 1001, finish writes, exit 0. That
# takes up to server.shutdown_timeout (10 s) and more: stop with `docker stop -t 30`
# (compose.yaml sets stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["twist", "bambid", "--port", "tcp:6969:interface=0.0.0.0"]
