// Command testcontrol serves Tailscale's own test control server
// (tailscale.com/tstest/integration/testcontrol) for the lab benchmark that
// compares Wiremesh's relay with Tailscale's DERP (e2e/tailscale_test.go,
// run by bench/relay-vs-tailscale.sh). Its DERP map has one region with one
// node: a derper started with -certmode manual on a lab address, reached
// with InsecureForTests (derper's self-signed certificate for an IP).
//
// It is its own module, built with the toolchain Tailscale v1.86.5 needs,
// so it is no part of Wiremesh's build or `make test`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
)

func main() {
	listen := flag.String("listen", "", "ip:port to serve the control protocol on (plain HTTP)")
	derp := flag.String("derp", "", "the derper's IPv4 address")
	derpPort := flag.Int("derp-port", 443, "the derper's HTTPS port")
	stunPort := flag.Int("stun-port", 3478, "the derper's STUN port (-1: none)")
	verbose := flag.Bool("v", false, "log every control request")
	flag.Parse()
	if err := run(*listen, *derp, *derpPort, *stunPort, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "testcontrol:", err)
		os.Exit(1)
	}
}

func run(listen, derp string, derpPort, stunPort int, verbose bool) error {
	lap, err := netip.ParseAddrPort(listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	dip, err := netip.ParseAddr(derp)
	if err != nil || !dip.Is4() {
		return fmt.Errorf("-derp %q: want an IPv4 address", derp)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ctl := &testcontrol.Server{
		Logf:             log.Printf,
		Verbose:          verbose,
		AllNodesSameUser: true,
		ExplicitBaseURL:  "http://" + lap.String(),
		DERPMap: &tailcfg.DERPMap{
			OmitDefaultRegions: true,
			Regions: map[int]*tailcfg.DERPRegion{
				900: {
					RegionID:   900,
					RegionCode: "lab",
					RegionName: "Lab",
					Nodes: []*tailcfg.DERPNode{{
						Name:             "900a",
						RegionID:         900,
						HostName:         dip.String(),
						IPv4:             dip.String(),
						IPv6:             "none",
						DERPPort:         derpPort,
						STUNPort:         stunPort,
						InsecureForTests: true,
					}},
				},
			},
		},
	}
	ln, err := net.Listen("tcp", lap.String())
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: ctl, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Printf("testcontrol: serving on %s, DERP %s:%d", lap, dip, derpPort)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
