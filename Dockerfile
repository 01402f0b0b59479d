# LevelChat SFU node and control plane: one image, two entry points.
#   docker build -t levelchat .
#   docker run --network host levelchat levelchat-sfu --config /etc/levelchat/sfu.toml
#   docker run --network host levelchat levelchat-control --config /etc/levelchat/control.toml
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY levelchat ./levelchat
COPY sfu ./sfu
COPY control ./control
COPY bench ./bench
RUN pip install --no-cache-dir --prefix=/install ".[redis]"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /var/lib/levelchat --create-home levelchat
COPY --from=build /install /usr/local
USER levelchat
WORKDIR /var/lib/levelchat
# 7880: node HTTP (WHIP/WHEP/API/metrics), 7882/udp: media, 7700: control plane
EXPOSE 7880 7882/udp 7700
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:7880/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT []
CMD ["levelchat-sfu"]
