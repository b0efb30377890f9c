// Package tlspin makes and stores self-signed TLS certificates for Wiremesh
// servers (coordinator and relays) and verifies peers by certificate pin, so
// that nodes reach servers securely without a public CA.
//
// A pin is "sha256/" followed by the unpadded base64url SHA-256 of the
// certificate's SubjectPublicKeyInfo, as in HPKP. Pinning the key rather than
// the certificate lets a server renew its certificate with the same key.
package tlspin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// Prefix starts every pin's text form.
const Prefix = "sha256/"

// certLifetime is how long generated certificates are valid. Pins cover the
// key, so the length only matters to clients that also check validity dates;
// ten years keeps a long-lived relay from ever needing attention.
const certLifetime = 10 * 365 * 24 * time.Hour

// ErrPinMismatch is returned when a server's certificate does not match the pin.
var ErrPinMismatch = errors.New("tls certificate does not match pin")

// Pin returns the pin of cert.
func Pin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return Prefix + base64.RawURLEncoding.EncodeToString(sum[:])
}

// ValidPin reports whether s has the form of a pin.
func ValidPin(s string) bool {
	if !strings.HasPrefix(s, Prefix) {
		return false
	}
	b, err := base64.RawURLEncoding.DecodeString(s[len(Prefix):])
	return err == nil && len(b) == sha256.Size
}

// VerifyFunc returns a tls.Config.VerifyPeerCertificate function that accepts
// a chain whose leaf matches any of pins. Use it with InsecureSkipVerify set:
// the pin replaces CA verification.
func VerifyFunc(pins ...string) func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
	return func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
		if len(rawCerts) == 0 {
			return fmt.Errorf("%w: no certificate", ErrPinMismatch)
		}
		leaf, err := x509.ParseCertificate(rawCerts[0])
		if err != nil {
			return fmt.Errorf("tlspin: parse certificate: %w", err)
		}
		got := Pin(leaf)
		for _, p := range pins {
			if subtle.ConstantTimeCompare([]byte(got), []byte(p)) == 1 {
				return nil
			}
		}
		return fmt.Errorf("%w: got %s", ErrPinMismatch, got)
	}
}

// ClientConfig returns a TLS 1.3 client config that trusts exactly pin, for
// ALPN protos. serverName is sent as SNI only.
func ClientConfig(pin, serverName string, protos ...string) *tls.Config {
	return &tls.Config{
		MinVersion:            tls.VersionTLS13,
		ServerName:            serverName,
		InsecureSkipVerify:    true, // replaced by VerifyPeerCertificate's pin check
		VerifyPeerCertificate: VerifyFunc(pin),
		NextProtos:            protos,
	}
}

// LoadOrCreate returns the certificate stored as name.crt and name.key in
// dir, making a self-signed ECDSA P-256 one for hosts if there is none. The
// key file is written with 0600 permissions.
func LoadOrCreate(dir, name string, hosts ...string) (tls.Certificate, error) {
	certPath := filepath.Join(dir, name+".crt")
	keyPath := filepath.Join(dir, name+".key")
	c, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err == nil {
		c.Leaf, err = x509.ParseCertificate(c.Certificate[0])
		return c, err
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return tls.Certificate{}, fmt.Errorf("load certificate %s: %w", certPath, err)
	}
	certPEM, keyPEM, err := Generate(name, hosts...)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, err
	}
	if err := key.WriteFileAtomic(keyPath, keyPEM, key.FileMode); err != nil {
		return tls.Certificate{}, err
	}
	if err := key.WriteFileAtomic(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	c, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, err
	}
	c.Leaf, err = x509.ParseCertificate(c.Certificate[0])
	return c, err
}

// Generate makes a self-signed certificate for hosts (DNS names or IPs) and
// returns it and its key in PEM.
func Generate(commonName string, hosts ...string) (certPEM, keyPEM []byte, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"wiremesh"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := parseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return nil, nil, err
	}
	kb, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, err
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
	return certPEM, keyPEM, nil
}
