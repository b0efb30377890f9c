package cli

import "runtime/debug"

// version is set at link time by the Makefile (-X .../cli.version=...).
var version = ""

// Version returns the build's version: the linker-set value, else the module
// version, else "devel".
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
