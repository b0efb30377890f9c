package relayd

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"
)

// checkPprofAddr accepts only a loopback IP address: the profiles expose
// memory contents and cost CPU, so they must never be reachable remotely.
func checkPprofAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	ip, perr := netip.ParseAddr(host)
	if err != nil || perr != nil || !ip.IsLoopback() {
		return fmt.Errorf("relayd: --pprof-listen %q: want a loopback address such as 127.0.0.1:6060", addr)
	}
	return nil
}

// servePprof serves the runtime profiles on addr, which must be loopback,
// until the returned server is closed. Used for the BENCHMARKS.md memory
// and CPU analysis.
func servePprof(addr string) (*http.Server, error) {
	if err := checkPprofAddr(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("relayd: --pprof-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return srv, nil
}
