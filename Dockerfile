# The one meshctl image: the CLI and control plane (`meshctl ... serve`) and the
# sidecar (`meshctl-proxy`, `meshctl-proxy init`), as every manifest refers to it.
#
# Build: make a wheelhouse of the project and its dependencies, then build with
# no network needed inside:
#   pip wheel --wheel-dir wheelhouse .
#   podman build -t ghcr.io/meshctl/meshctl:0.1.0 .          # or docker build
# BASE_IMAGE must provide python3 with venv (3.11+); iptables is installed when
# the base lacks it (that step needs the network: bases made for offline builds
# include it, see tests/image/test_image.py).
#
# Target samples-shop: the walkthrough's sample shop (samples/apps/shop.py, standard
# library only), one image for its three APIs, chosen by the first argument
# (samples/shop/deployments.yaml runs it):
#   podman build --target samples-shop -t ghcr.io/meshctl/samples-shop:0.1.0 .
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS samples-shop
COPY samples/apps/shop.py /app/shop.py
# nobody: the apps need no privilege and write nothing.
USER 65534:65534
ENTRYPOINT ["python3", "/app/shop.py"]
CMD ["--help"]

# The default target (the last stage): meshctl itself.
FROM ${BASE_IMAGE} AS meshctl

# iptables for the init container (`meshctl-proxy init` programs the pod's nat table).
RUN if ! command -v iptables >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends iptables && rm -rf /var/lib/apt/lists/*; \
    fi

COPY wheelhouse/ /tmp/wheelhouse/
RUN python3 -m venv /opt/meshctl \
    && /opt/meshctl/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse meshctl \
    && rm -rf /tmp/wheelhouse \
    && /opt/meshctl/bin/meshctl version --client \
    # Users without a shell: 2102 runs the proxy (iptables skips its traffic), 2103 the controllers,
    # as Linkerd numbers them.  Written directly: minimal bases have no useradd.
    && echo "meshctl-proxy:x:2102:2102::/nonexistent:/usr/sbin/nologin" >> /etc/passwd \
    && echo "meshctl:x:2103:2103::/nonexistent:/usr/sbin/nologin" >> /etc/passwd \
    && echo "meshctl-proxy:x:2102:" >> /etc/group \
    && echo "meshctl:x:2103:" >> /etc/group

ENV PATH=/opt/meshctl/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 2103:2103
CMD ["meshctl", "--help"]
