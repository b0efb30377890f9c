# Wiremesh build, test and tooling entry points. See README.md.

GO        ?= go
BIN       := bin
PKG       := github.com/wiremesh/wiremesh
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS   := -s -w -X $(PKG)/cli.version=$(VERSION)
STATICCHECK_VERSION := v0.8.2
# Fuzz time per target for `make fuzz`; every target in the tree runs.
FUZZTIME  ?= 10s
# Test timeout for the whole suite (CI budget is 90 min; we aim for < 30).
TEST_TIMEOUT ?= 25m
# make install: PREFIX is where things live at run time, DESTDIR a staging
# root prepended to every path (for packaging).
PREFIX    ?= /usr/local
DESTDIR   ?=
BINDIR    := $(PREFIX)/bin
UNITDIR   ?= $(PREFIX)/lib/systemd/system
SHAREDIR  := $(PREFIX)/share/wiremesh

.PHONY: all build test unit lab bench lint fuzz demo deps clean sweep install check-install dashboards

all: build

## build: compile every binary into bin/
build:
	@mkdir -p $(BIN)
	@for d in cmd/*/; do \
		name=$$(basename $$d); \
		echo "go build -o $(BIN)/$$name ./cmd/$$name"; \
		CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/$$name ./cmd/$$name || exit 1; \
	done

## deps: install the system packages and Go modules the tests need
deps:
	@scripts/deps.sh

## test: install what is missing, check make install and the systemd units, then run every test, lab tests included
test: deps check-install
	$(GO) test -tags lab -count=1 -timeout $(TEST_TIMEOUT) ./...

## install: binaries to $(DESTDIR)$(BINDIR), systemd units to $(DESTDIR)$(UNITDIR), dashboards, rules and example settings to $(DESTDIR)$(SHAREDIR)
install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SHAREDIR)/dashboards $(DESTDIR)$(SHAREDIR)/examples
	install -m 0755 $(BIN)/coordinator $(BIN)/relayd $(BIN)/meshnode $(BIN)/loadtest $(DESTDIR)$(BINDIR)/
	@for u in dist/systemd/*.service; do \
		echo "install $$u $(DESTDIR)$(UNITDIR)/"; \
		sed 's#/usr/local/bin/#$(BINDIR)/#g' $$u > $(DESTDIR)$(UNITDIR)/$$(basename $$u) || exit 1; \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$u); \
	done
	install -m 0644 dashboards/*.json dashboards/wiremesh.rules.yml $(DESTDIR)$(SHAREDIR)/dashboards/
	install -m 0644 dist/systemd/*.env.example $(DESTDIR)$(SHAREDIR)/examples/

## check-install: make install into temp dirs and systemd-analyze verify the installed units
check-install:
	@scripts/check-install.sh

## dashboards: regenerate the dashboards' JSON and README panel tables from dashboards/boards.go
dashboards:
	$(GO) generate ./dashboards/

## unit: tests that need no root (lab tests are excluded by their build tag)
unit:
	$(GO) test -count=1 ./...

## lab: only the network-lab tests (needs root)
lab: deps
	$(GO) test -tags lab -count=1 -timeout $(TEST_TIMEOUT) -run 'Lab' ./...

## bench: run every Go benchmark once (see BENCHMARKS.md for recorded runs)
bench:
	$(GO) test -tags lab -run '^$$' -bench . -benchmem -count=1 ./...

## lint: gofmt, go vet and staticcheck
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags lab ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) -tags lab ./...

## fuzz: a short bounded run of every fuzz target (FUZZTIME each)
fuzz:
	@FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

## demo: coordinator, two relay regions and three userspace nodes on loopback (no root)
demo: build
	@scripts/demo.sh

## sweep: remove lab namespaces and links left behind by killed test runs
sweep:
	$(GO) run ./lab/cmd/labsweep

clean:
	rm -rf $(BIN)
