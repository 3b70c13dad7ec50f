# The one Tether image: tether-ca, tether-discovery, tether-injector,
# tether-sidecar, tether-cni, tether-cni-node and the tether CLI, static
# binaries.
#   docker build -t REGISTRY/tether:TAG .
#
# Build stage: static, trimmed binaries (CGO off; grpcnotrace as in the
# Makefile, which keeps the binaries small).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ENV CGO_ENABLED=0
RUN for b in ca:tether-ca discovery:tether-discovery injector:tether-injector sidecar:tether-sidecar tether:tether cni:tether-cni cni-node:tether-cni-node; do \
      go build -trimpath -tags=grpcnotrace -ldflags='-s -w' -o /out/${b#*:} ./cmd/${b%%:*} || exit 1; \
    done

# Runtime stage. Not distroless: `tether-sidecar init` (the tether-init
# container) runs iptables-restore, so the image carries Debian's iptables
# (nft and legacy backends) and nothing else beyond the slim base.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# Non-root by default; the injected sidecar runs as 1337 and tether-init as
# root with NET_ADMIN and NET_RAW, both set by the injector.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tether"]
