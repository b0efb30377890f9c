package tlspin

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestLoadOrCreateStable(t *testing.T) {
	dir := t.TempDir()
	c1, err := LoadOrCreate(dir, "relay", "127.0.0.1", "relay.example")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := LoadOrCreate(dir, "relay")
	if err != nil {
		t.Fatal(err)
	}
	if Pin(c1.Leaf) != Pin(c2.Leaf) {
		t.Fatal("pin changed across reload")
	}
	if !ValidPin(Pin(c1.Leaf)) || ValidPin("sha256/xx") || ValidPin("md5/"+Pin(c1.Leaf)[7:]) {
		t.Fatal("ValidPin wrong")
	}
	st, _ := os.Stat(filepath.Join(dir, "relay.key"))
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %#o", st.Mode().Perm())
	}
	if len(c1.Leaf.IPAddresses) != 1 || len(c1.Leaf.DNSNames) != 1 {
		t.Fatalf("SANs: %v %v", c1.Leaf.IPAddresses, c1.Leaf.DNSNames)
	}
}

func TestPinnedHandshake(t *testing.T) {
	cert, err := LoadOrCreate(t.TempDir(), "srv", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := LoadOrCreate(t.TempDir(), "other")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	dial := func(pin string) error {
		c, err := tls.Dial("tcp", ln.Addr().String(), ClientConfig(pin, "srv"))
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(Pin(cert.Leaf)); err != nil {
		t.Fatalf("right pin: %v", err)
	}
	if err := dial(Pin(other.Leaf)); !errors.Is(err, ErrPinMismatch) {
		t.Fatalf("wrong pin: err = %v", err)
	}
	_ = net.IPv4len
}
