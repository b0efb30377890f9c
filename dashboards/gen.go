//go:build ignore

// gen writes the dashboards' JSON and the README's panel table from the Go
// description in this package: `go generate ./dashboards/`.
package main

import (
	"log"

	"github.com/wiremesh/wiremesh/dashboards"
)

func main() {
	if err := dashboards.Generate("."); err != nil {
		log.Fatal(err)
	}
}
