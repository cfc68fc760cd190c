# Two images from one file, both installing this project through its pyproject extras into /opt/venv, both
# non-root, neither needing a compiler, a package installer or a writable root filesystem at run time:
#   docker build --target operator -t kubetune-operator .   # Kopf operator: no torch (small)
#   docker build --target trainer  -t kubetune-trainer  .   # trainer: CUDA-capable torch, DeepSpeed, peft
# BASE is any Debian bookworm image with Python 3.11 and its venv module: the public slim image by default;
# `make images` (hack/build-images.sh) passes one it makes from Debian's packages. PyPI's torch wheels carry their
# CUDA libraries; the node's driver comes in through the NVIDIA container toolkit.
ARG BASE=python:3.11.7-slim-bookworm

FROM ${BASE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONNOUSERSITE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp
RUN groupadd --gid 1000 kubetune \
 && useradd --uid 1000 --gid 1000 --home-dir /home/kubetune --create-home --shell /usr/sbin/nologin kubetune

# Each image is built in place, in layers that podman's or Docker's cache keeps (a build stage copied over would
# store the trainer's gigabytes twice and leave its cache to be pruned): the dependencies pinned in pyproject.toml
# first (a layer that changes only with them), then this project without its dependencies, then pip removed. PIP_CACHE=1 says a pip cache is mounted at
# PIP_CACHE_DIR (hack/build-images.sh mounts this machine's); otherwise no layer keeps one. (An ARG is per stage.)
# The pinned dependency lists, read from pyproject.toml in a stage of their own: the layers below are keyed by the
# lists' contents, so a pyproject.toml change that leaves them alone (a linter's or a test tool's settings) reuses
# every dependency layer instead of installing torch again.
FROM base AS deps
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import tomllib, sys; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
[open(f'/src/{x}.txt', 'w').write('\n'.join(p['dependencies'] + p['optional-dependencies'][x]) + '\n') for x in ('operator', 'trainer')]"

FROM base AS build
ENV PIP_CACHE_DIR=/var/cache/pip
WORKDIR /src
COPY --from=deps /src/operator.txt /src/trainer.txt ./
RUN python3 -m venv /opt/venv

FROM build AS operator
ARG PIP_CACHE=0
RUN [ "$PIP_CACHE" = 1 ] || export PIP_NO_CACHE_DIR=1; pip install -r operator.txt
COPY pyproject.toml README.md ./
COPY api ./api
COPY cli ./cli
COPY operator ./operator
COPY trainer ./trainer
RUN [ "$PIP_CACHE" = 1 ] || export PIP_NO_CACHE_DIR=1; pip install --no-deps . \
 && pip uninstall -y pip setuptools \
 && cd / && rm -rf /src
# The working directory is never on sys.path at run time (set after the builds: setup.py scripts need it)
ENV PYTHONSAFEPATH=1
USER 1000:1000
WORKDIR /tmp
EXPOSE 8080 9090
ENTRYPOINT ["kubetune", "operator"]

# The trainer, built in place like the operator. DeepSpeed's CPU shared-memory all-reduce (CPU workers) is compiled here, once, so that no worker compiles
# it at start-up, with a compiler installed and removed within the same step (every package the step added is
# purged): no layer holds one. Everything else DeepSpeed could JIT-compile is unused (torch's AdamW is the optimizer
# everywhere). deepspeed builds against the installed torch, hence torch first and no build isolation, and never
# from pip's wheel cache (a wheel built elsewhere without the op would be taken as is).
FROM build AS trainer
ARG PIP_CACHE=0
RUN headers="$(python3 -c 'import os, sysconfig; print(os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))')" \
 && saved="$(apt-mark showmanual)" \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ $([ "$headers" = True ] || echo python3-dev) \
 && { [ "$PIP_CACHE" = 1 ] || export PIP_NO_CACHE_DIR=1; } \
 && pip install setuptools wheel 'torch==2.13.0' \
 && DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 pip install --no-cache-dir --no-build-isolation "$(grep '^deepspeed' trainer.txt)" \
 && pip install --no-build-isolation -r trainer.txt \
 && apt-mark auto '.*' >/dev/null && apt-mark manual $saved >/dev/null \
 && apt-get purge -y --auto-remove -o APT::AutoRemove::RecommendsImportant=false -o APT::AutoRemove::SuggestsImportant=false \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY api ./api
COPY cli ./cli
COPY operator ./operator
COPY trainer ./trainer
RUN [ "$PIP_CACHE" = 1 ] || export PIP_NO_CACHE_DIR=1; pip install --no-deps --no-build-isolation . \
 && pip uninstall -y pip setuptools wheel \
 && cd / && rm -rf /src
# The working directory is never on sys.path at run time (set after the builds: setup.py scripts need it)
ENV PYTHONSAFEPATH=1
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "kubetune_trainer"]
