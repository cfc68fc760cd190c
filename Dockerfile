# Two images from one file, both installing this project through its pyproject extras, both non-root:
#   docker build --target operator -t kubetune-operator .   # Kopf operator: no torch (small)
#   docker build --target trainer  -t kubetune-trainer  .   # trainer: CUDA-capable torch, DeepSpeed, peft
# PyPI's torch wheels carry their CUDA libraries; the node's driver comes in through the NVIDIA container toolkit.
FROM python:3.11.7-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONNOUSERSITE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 1000 kubetune \
 && useradd --uid 1000 --gid 1000 --home-dir /home/kubetune --create-home --shell /usr/sbin/nologin kubetune
WORKDIR /opt/kubetune
COPY pyproject.toml README.md ./
COPY api ./api
COPY cli ./cli
COPY operator ./operator
COPY trainer ./trainer

FROM base AS operator
RUN pip install '.[operator]'
USER 1000:1000
EXPOSE 8080 9090
ENTRYPOINT ["kubetune", "operator"]

FROM base AS trainer
# deepspeed builds against the installed torch, hence torch first and no build isolation; kernels are JIT-built
RUN pip install setuptools wheel 'torch==2.13.0' \
 && DS_BUILD_OPS=0 pip install --no-build-isolation '.[trainer]'
USER 1000:1000
ENV HOME=/tmp
ENTRYPOINT ["python", "-m", "kubetune_trainer"]
