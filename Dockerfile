# syntax=docker/dockerfile:1
# Build: a static binary, no cgo.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o /out/flarecast ./cmd/flarecast

# Run: nothing but the binary, as an unprivileged user.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/flarecast /usr/local/bin/flarecast
# The nonroot user owns its home; the ingest socket lives there (mount a
# volume at /home/nonroot to share it with a producer container: a new
# volume takes the image's ownership of that directory).
WORKDIR /home/nonroot
USER nonroot:nonroot
EXPOSE 8080 9090
ENV FLARECAST_INGEST_SOCKET=/home/nonroot/flarecast.sock
ENTRYPOINT ["/usr/local/bin/flarecast"]
CMD ["serve"]
