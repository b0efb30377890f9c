// Command labsweep deletes network namespaces left behind by lab test runs
// that were killed before they could clean up (`make sweep`).
package main

import (
	"fmt"
	"os"

	"github.com/wiremesh/wiremesh/lab"
)

func main() {
	swept, err := lab.Sweep()
	for _, n := range swept {
		fmt.Println("deleted", n)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "labsweep:", err)
		os.Exit(1)
	}
}
