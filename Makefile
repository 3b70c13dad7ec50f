# Tether. `make test` is the one command a fresh machine needs to run every test.
SHELL := /bin/bash
GO ?= go
# grpcnotrace keeps golang.org/x/net/trace (and with it html/template, whose
# reflection disables the linker's dead-code elimination of methods) out of
# every binary: the sidecar shrinks from 41 to 27 MB and its idle RSS by 6 MiB.
export GOFLAGS := $(strip $(GOFLAGS) -tags=grpcnotrace)

.PHONY: all build image image-test manifests test unit proto generate deps kube-bins vet fmt bench bench-proxy bench-inject bench-discovery bench-all run demo clean cluster-bins cluster-up cluster-down cluster-test

all: build

# Binaries are named as docs/architecture.md ("Parts") names them:
# tether-ca, tether-discovery, tether-injector, tether-sidecar, tether-cni,
# tether-cni-node, and the CLI tether. The first build compiles every dependency and takes minutes, so it
# says what it builds, a line per binary.
build:
	@mkdir -p bin
	@echo "building the binaries into bin/ (a few minutes the first time)…"
	@for c in ca discovery injector sidecar cni cni-node; do \
	  echo "  bin/tether-$$c"; $(GO) build -o bin/tether-$$c ./cmd/$$c || exit 1; \
	done
	@echo "  bin/tether"; $(GO) build -o bin/tether ./cmd/tether

# image builds the container images without Docker (hack/image,
# docs/install.md "The image") into .cache/image/: tether.tar, pause.tar and,
# once test/cluster/sampleapp exists, tether-sample.tar. Each is a
# docker-archive for docker load, kind load image-archive or ctr images import.
image:
	$(GO) run ./hack/image build tether
	$(GO) run ./hack/image build pause
	@if [ -d test/cluster/sampleapp ]; then \
	  $(GO) run ./hack/image build tether-sample; \
	else \
	  echo "image: skipping tether-sample: test/cluster/sampleapp does not exist at this commit"; \
	fi

# image-test checks the tether image make image built (hack/image
# TestTetherImage: config, files, a rebuild gives the same digest and, as
# root, the image's iptables and binaries in a chroot and an import and pull
# by a private containerd). make test skips that test, so that it does not
# compile every binary a second time; make cluster-test runs it.
IMAGE_TEST = TETHER_IMAGE_TAR=$(CURDIR)/.cache/image/tether.tar $(GO) test -count=1 -timeout 15m -v -run TestTetherImage ./hack/image
image-test: image
	$(IMAGE_TEST)

# manifests regenerates manifests/base, manifests/overlays/cert-manager and
# manifests/overlays/cni
# from the Helm chart charts/tether (internal/install; a test fails while
# the committed files are not what this writes).
manifests:
	$(GO) run ./hack/manifests

# proto regenerates the committed Go code under api/ from the .proto files.
# protoc comes from Debian's protobuf-compiler; the plugins are Go tools pinned in go.mod.
proto:
	protoc -I api \
	  --plugin=protoc-gen-go="$$($(GO) tool -n protoc-gen-go)" \
	  --plugin=protoc-gen-go-grpc="$$($(GO) tool -n protoc-gen-go-grpc)" \
	  --go_out=api --go_opt=paths=source_relative \
	  --go-grpc_out=api --go-grpc_opt=paths=source_relative \
	  $$(find api -name '*.proto')

# generate regenerates what controller-gen (a Go tool pinned in go.mod) makes
# from the Kubernetes API types in api/tether/ (hack/generate.sh): their deep
# copies and the CRDs in charts/tether/crds/, copied to manifests/crds/. Run it
# after changing a type or a kubebuilder marker and commit the result; a test
# (api/tether/v1alpha1) fails while the committed files are not current.
# Then the kustomize folders generated from the chart (make manifests).
generate:
	GO=$(GO) bash hack/generate.sh
	$(GO) run ./hack/manifests

# deps installs what the tests need on a fresh machine: Debian packages when
# running as root (skipped when already present), Go modules.
deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  for p in openssl:openssl protoc:protobuf-compiler iptables-restore:iptables ip:iproute2 curl:curl dig:bind9-dnsutils promtool:prometheus \
	    containerd:containerd runc:runc /usr/lib/cni/bridge:containernetworking-plugins conntrack:conntrack tcpdump:tcpdump; do \
	    command -v $${p%%:*} >/dev/null || missing="$$missing $${p#*:}"; \
	  done; \
	  command -v dpkg-deb >/dev/null || missing="$$missing dpkg"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  elif ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then \
	    echo "apt-get update (make image downloads iptables' packages)"; apt-get update -qq; \
	  fi; \
	fi
	$(GO) mod download

# kube-bins builds kube-apiserver, etcd and helm (hack/helm, for the test
# that helm template and tether install agree) from Go modules into
# .cache/kube/bin (about 9 minutes cold on 2 cores, instant when already built).
kube-bins:
	bash hack/kube/build.sh

# cluster-bins builds what the real single-node cluster runs and Debian does
# not package (Kubernetes' node components, CoreDNS, the image tool) into
# .cache/kube/bin; cluster-up starts the node (root; docs/install.md,
# "Running the real-node tests"), cluster-down stops it and removes every
# trace (also after an interrupted run), cluster-test runs the user story
# (test/cluster) on a fresh node, always takes it down, then runs the tests
# that must not overlap the node: hack/cluster's and the image's.
CLUSTER := .cache/cluster/tether-cluster
cluster-bins:
	bash hack/cluster/build.sh

cluster-up: cluster-bins image
	$(CLUSTER) up

cluster-down:
	@if [ -x $(CLUSTER) ]; then $(CLUSTER) down; else $(GO) run ./hack/cluster down; fi

# The story (test/cluster) runs on the node cluster-up started. hack/cluster's
# own tests start and take down nodes of their own, and a node's down kills
# every container in the cgroup all nodes share (CgroupRoot) and compares the
# host's cgroups with before: run together (go test runs packages in
# parallel) they killed the story's pods and failed themselves, so they run
# once this node is down. So does the image's test (image-test), on the
# image cluster-up built: it needs root too, and its private containerd and
# rebuild would only slow the story down.
cluster-test: cluster-up
	TETHER_CLUSTER_TEST=1 $(GO) test -count=1 -timeout 50m -v ./test/cluster; \
	  rc=$$?; $(CLUSTER) down; \
	  TETHER_CLUSTER_TEST=1 $(GO) test -count=1 -timeout 15m -v ./hack/cluster || rc=1; \
	  $(IMAGE_TEST) || rc=1; \
	  exit $$rc

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# test runs every test but those of the real node and of the built image,
# which run in cluster-test (test/cluster and hack/image TestTetherImage skip
# here, saying so). Kubernetes tests use the binaries from kube-bins.
test: deps kube-bins vet
	TETHER_REQUIRE_KUBE=1 $(GO) test -race -count=1 -timeout 30m ./...

# unit runs the tests without building Kubernetes (those tests skip).
unit:
	$(GO) test -count=1 ./...

# run starts tether-ca on a disk store and issues an SVID with the CLI.
run:
	hack/run-local.sh

# demo builds the binaries and runs the whole mesh on loopback until Ctrl-C
# (docs/quickstart.md); DEMO_FLAGS=--rotate adds a root rotation under traffic.
DEMO_FLAGS ?=
demo: build
	bin/tether demo $(DEMO_FLAGS)

# bench runs the CA signing benchmark; bench-proxy the sidecar data path
# against a relay, stunnel and HAProxy (about 17 minutes). Results and
# exact commands: docs/BENCHMARKS.md.
bench:
	bash bench/run.sh

bench-proxy:
	bash bench/proxy/run.sh

# bench-inject: the admission webhook against a fixed-answer baseline (about 2.5 minutes).
bench-inject:
	bash bench/inject/run.sh

# bench-discovery: the sidecar DNS server against a minimal miekg/dns server
# (dnsperf, installed as root), then discovery with 10,000 services served to
# 1,000 ADS clients beside the same mesh at 1/10 scale (about 20 minutes).
bench-discovery:
	bash bench/discovery/run.sh

# bench-all runs every benchmark above in one go (about 40 minutes: on a quiet
# machine) and writes what they print, with the machine, the date and each
# command, between the markers of docs/BENCHMARKS.md, and the latency chart
# docs/benchmarks/latency.svg. BENCH_ALL_FLAGS=--quick is a smoke test of a few
# minutes that writes into a temporary directory, never into docs/.
BENCH_ALL_FLAGS ?=
bench-all:
	bash bench/run-all $(BENCH_ALL_FLAGS)

clean:
	rm -rf bin .tether
