// Command relayd is the Wiremesh relay server. See docs/relayd.md.
package main

import (
	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/relayd"
)

// SIGTERM and SIGINT end the command's context: the relay drains, then
// exits.
func main() { cli.Main("relayd", relayd.Command) }
