# esnats: the usual targets. Everything needs only Go and the module proxy;
# NATS servers are embedded in-process.
GO ?= go
PKGS ?= ./...
BENCHTIME ?= 2s

.PHONY: all test demo bench lint fuzz soak cover tidy compose-up compose-down compose-logs

all: lint test

## test: the whole module with the race detector (the README's test command)
test:
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

## demo: the shopping-cart example on an embedded NATS server, no set-up
demo:
	$(GO) run ./examples/shoppingcart

## bench: benchmarks, each beside the raw JetStream operation it is built on
bench:
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -benchmem ./stream/ ./aggregate/
	$(GO) test -run '^$$' -bench . -benchtime 1x ./projections/
	$(GO) test -run '^$$' -bench Memory -benchtime 1x -timeout 60m ./internal/membench/

## lint: formatting and vet
lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

## fuzz: a longer fuzz run of the id escaping, envelope decoding, codec, upcaster and snapshot targets
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzEncodeID$$' -fuzztime $(FUZZTIME) ./stream/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeID$$' -fuzztime $(FUZZTIME) ./stream/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEvent$$' -fuzztime $(FUZZTIME) ./stream/
	$(GO) test -run '^$$' -fuzz '^FuzzCodecUnmarshal$$' -fuzztime $(FUZZTIME) ./stream/
	$(GO) test -run '^$$' -fuzz '^FuzzUpcast$$' -fuzztime $(FUZZTIME) ./stream/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeSnapshot$$' -fuzztime $(FUZZTIME) ./kv/

## soak: the soak run (minutes; not part of make test): mixed commands, loads, snapshots and
## projections on a 3-node cluster with faults, then the checker of internal/soak; prints a summary
SOAK ?= 5m
SOAKTIMEOUT ?= 3h
soak:
	$(GO) test -race -run '^TestSoak$$' -count=1 -timeout $(SOAKTIMEOUT) -v ./internal/soak/ -args -soak=$(SOAK)

cover:
	$(GO) test -count=1 -coverprofile=cover.out $(PKGS) && $(GO) tool cover -func=cover.out | tail -1

tidy:
	$(GO) mod tidy

## compose-up: a 3-node NATS cluster and the service example (examples/service) in Docker
compose-up:
	docker compose up --build -d

## compose-down: stop and remove the containers (the data volumes stay; docker compose down -v removes them)
compose-down:
	docker compose down

## compose-logs: follow the logs of the compose services
compose-logs:
	docker compose logs -f
