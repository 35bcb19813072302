# syntax=docker/dockerfile:1
# The one image both daemons run from: gputopo-extender (the Deployment) and
# gputopo-device-plugin (the DaemonSet) are its console scripts, and so are the operator
# tools (gputopo, kubectl-gputopo). The manifests name the script in `command:`.
#
#   docker build -t ghcr.io/gputopo/gpu-topology-scheduler:0.1.0 .
#   docker push ghcr.io/gputopo/gpu-topology-scheduler:0.1.0
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY topology/ topology/
COPY extender/ extender/
COPY plugin/ plugin/
COPY simulator/ simulator/
COPY console/ console/
RUN python -m venv /opt/gputopo \
 && /opt/gputopo/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/gputopo/bin/pip install --no-cache-dir . \
 && /opt/gputopo/bin/gputopo presets >/dev/null

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="gpu-topology-scheduler" \
      org.opencontainers.image.description="Topology-aware GPU scheduling for Kubernetes: scheduler extender and device plugin" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/gputopo /opt/gputopo
ENV PATH=/opt/gputopo/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root by default (the extender). The device plugin's DaemonSet runs it as root
# (runAsUser: 0): its socket goes in the kubelet's root-owned device-plugins directory.
USER 65532:65532
CMD ["gputopo", "--help"]
