// Command coordinator is the Wiremesh control plane: `coordinator serve`
// runs it, the other subcommands administer a running one through its admin
// socket. See docs/coordinator.md.
package main

import (
	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/coordinator"
)

func main() { cli.Main("coordinator", coordinator.Command) }
