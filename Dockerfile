# One image for every Leaseline service; the service is chosen by the command
# (`python -m services.<name>`), exactly as `make run` starts it locally.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 UV_PROJECT_ENVIRONMENT=/app/.venv PATH=/app/.venv/bin:$PATH
WORKDIR /app
RUN pip install --no-cache-dir uv==0.13.9
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY shared ./shared
COPY services ./services
COPY deploy/__init__.py ./deploy/__init__.py
COPY deploy/sinks ./deploy/sinks
RUN useradd --system --uid 10001 leaseline
USER leaseline
ENV PYTHONPATH=/app HTTP_HOST=0.0.0.0 HTTP_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=6 CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
