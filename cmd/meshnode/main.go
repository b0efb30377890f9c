// Command meshnode is the Wiremesh node daemon and its CLI. See
// docs/meshnode.md.
package main

import (
	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/meshnode/nodecli"
)

func main() { cli.Main("meshnode", nodecli.Command) }
