# Tether. `make test` is the one command a fresh machine needs to run every test.
SHELL := /bin/bash
GO ?= go

.PHONY: all build test unit proto deps kube-bins vet fmt bench run clean

all: build

build:
	$(GO) build -o bin/ ./cmd/...

# proto regenerates the committed Go code under api/ from the .proto files.
# protoc comes from Debian's protobuf-compiler; the plugins are Go tools pinned in go.mod.
proto:
	protoc -I api \
	  --plugin=protoc-gen-go="$$($(GO) tool -n protoc-gen-go)" \
	  --plugin=protoc-gen-go-grpc="$$($(GO) tool -n protoc-gen-go-grpc)" \
	  --go_out=api --go_opt=paths=source_relative \
	  --go-grpc_out=api --go-grpc_opt=paths=source_relative \
	  $$(find api -name '*.proto')
