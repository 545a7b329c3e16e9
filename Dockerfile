# The service's image. One image, three commands (README, "Deploy"):
#   docker run IMAGE migrate     apply the database migrations (once, before rolling out)
#   docker run IMAGE             serve the API on :8000 (serve --host 0.0.0.0 --port 8000)
#   docker run IMAGE worker      the outbox relay and scheduled jobs
# Secrets and channel keys are given at run time (environment, mounted PEM files), never
# built in: .dockerignore lets only the code into the build.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the project and its dependencies into a virtualenv --------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY backend ./backend
COPY payment_adapters ./payment_adapters
# the dependencies come as wheels or pure-Python sources: no compiler in this stage either
RUN /opt/venv/bin/pip install --no-cache-dir .

# --- runtime: the virtualenv on a slim Python, as an unprivileged user ------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# the publication PDFs embed a subset of this CJK font (PDF_FONT_PATH's default)
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-wqy-microhei=0.2.0-beta-3.1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /srv --no-create-home \
       --shell /usr/sbin/nologin app \
    && mkdir -p /srv/data \
    && chown app:app /srv/data
COPY --from=build /opt/venv /opt/venv
# data/ holds only what sandbox mode generates; a deployment sets APP_SECRET and PII_KEY
WORKDIR /srv
USER 10001:10001
EXPOSE 8000
# slim images have no curl: ask /healthz (which also reaches the database) with Python
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]
ENTRYPOINT ["python", "-m", "backend"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
