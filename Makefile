# flarecast — two commands matter: `make run` and `make test`.
GO        ?= go
BIN       := bin
GOFLAGS_BUILD := -trimpath
LDFLAGS   := -s -w

.PHONY: all build run test test-race vet fmt bench fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -ldflags '$(LDFLAGS)' -o $(BIN)/flarecast ./cmd/flarecast

# Run the server with its embedded defaults: WebSocket on :8080/ws, admin
# on :9090, ingest socket ./flarecast.sock, no authentication.
run: build
	./$(BIN)/flarecast serve

# Everything the project tests: vet, then every package under the race detector.
test: vet
	$(GO) test -race -count=1 -timeout 30m ./...

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./bench/

clean:
	rm -rf $(BIN)
