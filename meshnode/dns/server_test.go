package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
	wmmetrics "github.com/wiremesh/wiremesh/metrics"
)

// serve runs r on loopback UDP and TCP (one port) until the test ends.
func serve(t testing.TB, r *Resolver) string {
	t.Helper()
	pc, ln := listenBoth(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, pc, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return pc.LocalAddr().String()
}

func TestServeUDPAndTCP(t *testing.T) {
	var extra []Record
	for i := 0; i < 100; i++ {
		extra = append(extra, Record{Name: "many.mesh.internal", Type: "A", Value: fmt.Sprintf("198.19.1.%d", i)})
	}
	r := meshResolver(t, Config{}, Settings{Extra: extra})
	addr := serve(t, r)
	for _, network := range []string{"udp", "tcp"} {
		c := &mdns.Client{Net: network}
		m := new(mdns.Msg)
		m.SetQuestion("b.mesh.internal.", mdns.TypeA)
		resp, _, err := c.Exchange(m, addr)
		if err != nil || firstA(resp) != netip.MustParseAddr("100.64.0.2") {
			t.Fatalf("%s: %v %v", network, resp, err)
		}
	}
	// 100 records do not fit 512 bytes: UDP without EDNS0 is truncated,
	// TCP carries them all.
	m := new(mdns.Msg)
	m.SetQuestion("many.mesh.internal.", mdns.TypeA)
	resp, _, err := (&mdns.Client{Net: "udp"}).Exchange(m, addr)
	if resp != nil {
		resp.Compress = true // as it was sent
	}
	if err != nil || !resp.Truncated || resp.Len() > 512 {
		t.Fatalf("udp, large answer: truncated=%v len=%d err=%v", resp != nil && resp.Truncated, resp.Len(), err)
	}
	resp, _, err = (&mdns.Client{Net: "tcp"}).Exchange(m, addr)
	if err != nil || resp.Truncated || len(resp.Answer) != 100 {
		t.Fatalf("tcp, large answer: %d records, err %v", len(resp.Answer), err)
	}
	// Garbage on UDP gets no answer and breaks nothing.
	uc, _ := net.Dial("udp", addr)
	uc.Write([]byte("\x00\x01garbage"))
	uc.Close()
	m.SetQuestion("c.mesh.internal.", mdns.TypeA)
	if resp, _, err := (&mdns.Client{Net: "udp"}).Exchange(m, addr); err != nil || firstA(resp) != netip.MustParseAddr("100.64.0.3") {
		t.Fatalf("after garbage: %v %v", resp, err)
	}
}

func TestMetricsLint(t *testing.T) {
	reg := wmmetrics.NewRegistry()
	up := startUpstream(t, "198.18.0.1")
	r := meshResolver(t, Config{Registerer: reg}, Settings{Nameservers: []netip.AddrPort{up.addr}})
	NewOSMetrics(reg).setWarning(true)
	ask(t, r, "b.mesh.internal.", mdns.TypeA)
	ask(t, r, "nobody.mesh.internal.", mdns.TypeA)
	ask(t, r, "example.test.", mdns.TypeA)
	problems, err := wmmetrics.Lint(reg)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("metric naming problems:\n%s", strings.Join(problems, "\n"))
	}
	mfs, _ := reg.Gather()
	got := map[string]string{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			got[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = ""
		}
	}
	for _, want := range []string{
		"meshnode_dns_queries_total{result=noerror,source=mesh}",
		"meshnode_dns_queries_total{result=nxdomain,source=mesh}",
		"meshnode_dns_queries_total{result=noerror,source=global}",
		"meshnode_dns_forward_duration_seconds{source=global}",
		"meshnode_dns_forward_in_flight{}",
		"meshnode_dns_forward_refused_total{}",
		"meshnode_dns_os_config_reapplied_total{}",
		"meshnode_dns_health_warning{}",
	} {
		if _, ok := got[want]; !ok {
			t.Errorf("metric %s missing (have %v)", want, got)
		}
	}
}
