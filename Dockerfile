# LevelChat SFU node and control plane: one image, two entry points (docs/operations.md).
#   docker build -t levelchat .
#   docker run --network host -v $PWD/deploy/config:/etc/levelchat:ro --env-file node.env \
#     levelchat levelchat-sfu --config /etc/levelchat/sfu.toml
#   docker run --network host -v $PWD/deploy/config:/etc/levelchat:ro --env-file control.env \
#     -e HEALTHCHECK_URL=http://127.0.0.1:7700/readyz levelchat levelchat-control --config /etc/levelchat/control.toml
# deploy/docker-compose.yml runs Redis, a control plane and two nodes.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY levelchat ./levelchat
COPY sfu ./sfu
COPY control ./control
COPY bench ./bench
# the package the README's scripts install (pip install .), with the Redis store
RUN pip install --no-cache-dir --prefix=/install ".[redis]"

FROM python:3.11-slim
RUN groupadd --system --gid 10001 levelchat \
 && useradd --system --uid 10001 --gid levelchat --home /var/lib/levelchat --create-home levelchat
COPY --from=build /install /usr/local
# PYTHONMALLOC=malloc: objects on glibc's heap, which the node trims after a burst of sessions or
# connections ends (RSS back near its start; pymalloc's arenas stay pinned): docs/operations.md, "Memory"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONMALLOC=malloc \
    HEALTHCHECK_URL=http://127.0.0.1:7880/healthz
USER levelchat
WORKDIR /var/lib/levelchat
# 7880: node HTTP (WHIP/WHEP/API/metrics), 7882/udp: media, 7881/tcp: ICE-TCP media, 7700: control plane
EXPOSE 7880 7881 7882/udp 7700
# liveness of whichever process runs: the node's /healthz by default; a control-plane container
# sets HEALTHCHECK_URL=http://127.0.0.1:7700/readyz (or /healthz)
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request as u; sys.exit(u.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2).status != 200)"]
# SIGTERM drains a node (up to drain_deadline_s, 300 s): give `docker stop` a longer --time
STOPSIGNAL SIGTERM
ENTRYPOINT []
CMD ["levelchat-sfu"]
