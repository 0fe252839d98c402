# weft.mk — build rules for a weft metric plugin in C, included by the
# plugin's Makefile, which sets:
#
#   NAME    plugin name: the component is $(NAME).wasm
#   SRCS    the plugin's C sources
#   WIT     directory holding weft.wit
#   WEFT_C  directory holding this SDK (weft_plugin.h, weft_plugin.c, weft.mk)
#
# Steps: `wit-bindgen c` generates the `metric` world's bindings into
# $(BUILD)/gen; clang compiles them with the SDK and the plugin into a
# wasm32-wasi reactor module; `wasm-tools component new` wraps that module as
# a component. The WASI preview1 reactor adapter is passed along for plugins
# that use WASI (printf to stdout, say): the SDK itself uses none, and
# wasm-tools leaves an adapter out when the module does not import from it.
#
# Tools (see docs/plugins.md, "C"): clang 14 + lld + wasi-libc (Debian),
# wit-bindgen-cli 0.63.0, wasm-tools 1.263.0, and cargo, which fetches the
# adapter from the crate `wasi-preview1-component-adapter-provider` once
# (then from its cache, also offline); or pass ADAPTER=/path/to/
# wasi_snapshot_preview1.reactor.wasm.

CLANG ?= clang
WIT_BINDGEN ?= wit-bindgen
WASM_TOOLS ?= wasm-tools
CARGO ?= cargo
CFLAGS ?= -O2 -Wall
LDFLAGS ?= -Wl,--strip-debug
BUILD ?= build
ADAPTER_CRATE := wasi-preview1-component-adapter-provider
ADAPTER_VERSION := 48.0.8
ADAPTER ?= $(BUILD)/wasi_snapshot_preview1.reactor.wasm

$(NAME).wasm: $(BUILD)/$(NAME).core.wasm $(ADAPTER)
	$(WASM_TOOLS) component new $< --adapt wasi_snapshot_preview1=$(ADAPTER) -o $@

$(BUILD)/gen/metric.h: $(WIT)/weft.wit
	$(WIT_BINDGEN) c $(WIT) --world metric --out-dir $(BUILD)/gen

$(BUILD)/$(NAME).core.wasm: $(SRCS) $(WEFT_C)/weft_plugin.c $(WEFT_C)/weft_plugin.h $(BUILD)/gen/metric.h
	$(CLANG) --target=wasm32-wasi -mexec-model=reactor $(CFLAGS) -I$(WEFT_C) -I$(BUILD)/gen \
	    $(LDFLAGS) -o $@ $(SRCS) $(WEFT_C)/weft_plugin.c $(BUILD)/gen/metric.c $(BUILD)/gen/metric_component_type.o

# The adapter ships as a plain file inside a crate: a throwaway manifest that
# depends on it makes `cargo metadata` download it into cargo's cache (or
# find it there) and tell where it lies.
$(BUILD)/wasi_snapshot_preview1.reactor.wasm:
	mkdir -p $(BUILD)/adapter
	printf '[package]\nname = "adapter"\nversion = "0.0.0"\nedition = "2021"\n[lib]\npath = "lib.rs"\n[dependencies]\n%s = "=%s"\n[workspace]\n' \
	    $(ADAPTER_CRATE) $(ADAPTER_VERSION) > $(BUILD)/adapter/Cargo.toml
	manifest=$$($(CARGO) metadata --format-version 1 --manifest-path $(BUILD)/adapter/Cargo.toml \
	    | grep -o '"manifest_path":"[^"]*/$(ADAPTER_CRATE)-$(ADAPTER_VERSION)/Cargo.toml"' | cut -d'"' -f4) \
	    && cp "$$(dirname "$$manifest")/artefacts/wasi_snapshot_preview1.reactor.wasm" $@

clean:
	rm -rf $(BUILD) $(NAME).wasm

.PHONY: clean
