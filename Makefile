# flarecast — two commands matter: `make run` and `make test`.
GO        ?= go
BIN       := bin
GOFLAGS_BUILD := -trimpath
LDFLAGS   := -s -w

.PHONY: all build run test test-js vet bench fuzz churn clean loadtest-smoke

all: build

build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -ldflags '$(LDFLAGS)' -o $(BIN)/flarecast ./cmd/flarecast
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -ldflags '$(LDFLAGS)' -o $(BIN)/flarecast-loadtest ./cmd/flarecast-loadtest

# Run the server with its embedded defaults: WebSocket on :8080/ws, admin
# on :9090, ingest socket ./flarecast.sock, no authentication.
run: build
	./$(BIN)/flarecast serve

# Everything the project tests: vet, every package under the race detector,
# then the TypeScript client (clients/js) against the built binary.
test: vet
	$(GO) test -race -count=1 -timeout 30m ./...
	$(MAKE) test-js

# The TypeScript client @flarecast/client: install its pinned dev tools,
# compile, and run its tests (node --test) against bin/flarecast, including
# the shared conformance scenario and a run in headless Chromium.
test-js: build
	cd clients/js && npm ci --no-audit --no-fund && npm run build && npm test

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

# A 2-second load test against a server the load tester starts itself:
# 200 compressed connections, 200 events/s; fails on any loss or duplicate.
loadtest-smoke: build
	./$(BIN)/flarecast-loadtest --spawn --server-bin $(BIN)/flarecast --scenario smoke --out loadtest-out

# Fuzz every target for FUZZTIME each (go test -fuzz takes one target at a
# time). `make test` replays the committed corpora under testdata/fuzz.
FUZZTIME ?= 60s
FUZZ_TARGETS := ./codec:FuzzClientFrames ./codec:FuzzInflate ./codec:FuzzDecodeClientMessage \
	./event:FuzzParse ./engine:FuzzUpgradeRequest ./engine:FuzzDispatcherCommands
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "== $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

# The full churn test: 100,000 connect/subscribe/disconnect cycles without
# the race detector (make test runs 20,000 under -race).
churn:
	$(GO) test -count=1 -run '^TestChurn$$' -v ./engine/

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./bench/
	$(GO) test -run '^$$' -bench Pipeline -benchmem ./engine/

clean:
	rm -rf $(BIN)
