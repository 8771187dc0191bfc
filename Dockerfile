# syntax=docker/dockerfile:1
#
# The esnats CLI and the service example's two processes, in one small
# image (docker-compose.yml runs cart-api and cart-worker from it):
#
#   docker build -t esnats:local .
#   docker run --rm esnats:local                      # esnats
#   docker run --rm -e NATS_URL=nats://host.docker.internal:4222 esnats:local /usr/local/bin/cart-api
#
# deploy/deploy_test.go checks that the packages built here exist.

FROM golang:1.26 AS build
WORKDIR /src
# Modules first: this layer is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# Static binaries: the runtime image has no C library.
ENV CGO_ENABLED=0
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags="-s -w" -o /out/ \
        ./cmd/esnats \
        ./examples/service/cmd/cart-api \
        ./examples/service/cmd/cart-worker

# Certificates, time zone data, /etc/passwd with an unprivileged user, and
# nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER nonroot:nonroot
CMD ["/usr/local/bin/esnats"]
