# MergeScope dashboard image. CPU by default; `--build-arg TORCH_VARIANT=cuda` for NVIDIA GPUs
# (the CUDA wheels of torch bring their own CUDA libraries; the host needs only the driver).
#   docker build -t mergescope .
#   docker run --rm -p 8501:8501 mergescope
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VARIANT=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
# torch first, from the variant's index, so requirements.txt's pin is already satisfied after it.
RUN torch_pin="$(grep -E '^torch==' /tmp/requirements.txt)" \
 && if [ "$TORCH_VARIANT" = "cpu" ]; then pip install "$torch_pin" --index-url "$TORCH_CPU_INDEX"; \
    elif [ "$TORCH_VARIANT" = "cuda" ]; then pip install "$torch_pin"; \
    else echo "TORCH_VARIANT must be cpu or cuda, got $TORCH_VARIANT" >&2; exit 1; fi \
 && pip install -r /tmp/requirements.txt

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 mergescope \
 && mkdir -p /models /cache && chown mergescope:mergescope /models /cache
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY --chown=mergescope:mergescope app.py ./
COPY --chown=mergescope:mergescope views ./views
COPY --chown=mergescope:mergescope engine ./engine
COPY --chown=mergescope:mergescope cache ./cache
COPY --chown=mergescope:mergescope zoo ./zoo
COPY --chown=mergescope:mergescope .streamlit ./.streamlit
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    MERGESCOPE_MODEL_ROOTS=/app/zoo/models:/models \
    MERGESCOPE_CACHE_DIR=/cache \
    STREAMLIT_SERVER_ADDRESS=0.0.0.0
VOLUME ["/models", "/cache"]
USER mergescope
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
CMD ["python", "-m", "streamlit", "run", "app.py"]
