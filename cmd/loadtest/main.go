// Command loadtest drives Wiremesh components with synthetic load. See
// `loadtest --help` and BENCHMARKS.md.
package main

import (
	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/loadtest"
)

func main() { cli.Main("loadtest", loadtest.Command) }
