package certs_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/throughcare/throughcare/pkg/certs"
)

// testAgencies are the default protocol's agencies.
var testAgencies = []string{"prison", "probation", "socialwork"}

// now has no sub-second part: certificates keep whole seconds only.
func now() time.Time { return time.Now().UTC().Truncate(time.Second) }

func ensure(t *testing.T, dir string, at time.Time) *certs.Bundle {
	t.Helper()
	b, err := certs.Ensure(dir, testAgencies, at)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	return b
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cert
}

func setFiles(b *certs.Bundle) []string {
	files := []string{b.CAFile(), b.CAKeyFile()}
	for _, agency := range testAgencies {
		cert, key := b.ServerFiles(agency)
		files = append(files, cert, key)
		cert, key = b.ClientFiles(agency)
		files = append(files, cert, key)
	}
	cert, key := b.ClientFiles(certs.Operator)
	return append(files, cert, key)
}

func TestEnsureCreatesSet(t *testing.T) {
	at := now()
	dir := filepath.Join(t.TempDir(), "certs")
	b := ensure(t, dir, at)

	files := setFiles(b)
	if len(files) != 16 {
		t.Fatalf("got %d files in the set, want 16", len(files))
	}
	for _, path := range files {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(path, "-key.pem") && info.Mode().Perm() != 0o600 {
			t.Errorf("%s: got mode %v, want 0600", path, info.Mode().Perm())
		}
		parent, err := os.Stat(filepath.Dir(path))
		if err != nil {
			t.Fatal(err)
		}
		if parent.Mode().Perm() != 0o700 {
			t.Errorf("%s: got mode %v, want 0700", filepath.Dir(path), parent.Mode().Perm())
		}
	}

	ca := readCert(t, b.CAFile())
	if !ca.IsCA || ca.Subject.CommonName != "throughcare local CA" {
		t.Errorf("CA: got IsCA %v, name %q; want a CA named throughcare local CA", ca.IsCA, ca.Subject.CommonName)
	}
	if key, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || key.Curve != elliptic.P256() {
		t.Errorf("CA key: got %T, want ECDSA P-256", ca.PublicKey)
	}
	if want := at.AddDate(10, 0, 0); !ca.NotAfter.Equal(want) {
		t.Errorf("CA expires %v, want %v", ca.NotAfter, want)
	}

	for _, agency := range testAgencies {
		certFile, _ := b.ServerFiles(agency)
		server := readCert(t, certFile)
		if want := []string{"localhost", agency, agency + ".throughcare"}; !slices.Equal(server.DNSNames, want) {
			t.Errorf("%s server DNS names: got %v, want %v", agency, server.DNSNames, want)
		}
		if len(server.IPAddresses) != 2 || !server.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) || !server.IPAddresses[1].Equal(net.IPv6loopback) {
			t.Errorf("%s server IPs: got %v, want [127.0.0.1 ::1]", agency, server.IPAddresses)
		}
		if len(server.URIs) != 0 {
			t.Errorf("%s server certificate names a caller: %v", agency, server.URIs)
		}
		if want := at.AddDate(2, 0, 0); !server.NotAfter.Equal(want) {
			t.Errorf("%s server certificate expires %v, want %v", agency, server.NotAfter, want)
		}
		checkClient(t, b, agency, "spiffe://throughcare/agency/"+agency, at)
	}
	checkClient(t, b, certs.Operator, "spiffe://throughcare/operator", at)
}

func checkClient(t *testing.T, b *certs.Bundle, identity, wantURI string, at time.Time) {
	t.Helper()
	certFile, _ := b.ClientFiles(identity)
	client := readCert(t, certFile)
	if len(client.URIs) != 1 || client.URIs[0].String() != wantURI {
		t.Errorf("%s client URIs: got %v, want [%s]", identity, client.URIs, wantURI)
	}
	if len(client.DNSNames) != 0 || len(client.IPAddresses) != 0 {
		t.Errorf("%s client certificate names hosts: %v %v", identity, client.DNSNames, client.IPAddresses)
	}
	if !slices.Equal(client.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("%s client key usage: got %v, want client auth only", identity, client.ExtKeyUsage)
	}
	if want := at.AddDate(2, 0, 0); !client.NotAfter.Equal(want) {
		t.Errorf("%s client certificate expires %v, want %v", identity, client.NotAfter, want)
	}
}

func TestEnsureLoadsExistingSet(t *testing.T) {
	at := now()
	dir := t.TempDir()
	first := ensure(t, dir, at)
	before := map[string][]byte{}
	for _, path := range setFiles(first) {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		before[path] = data
	}

	second := ensure(t, dir, at.Add(24*time.Hour))
	if got, want := second.CAFingerprint(), first.CAFingerprint(); got != want {
		t.Errorf("CA fingerprint: got %s, want %s", got, want)
	}
	for path, want := range before {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s changed on the second Ensure", path)
		}
	}
}

func TestEnsureRefusesPartialSet(t *testing.T) {
	tests := []struct {
		name   string
		remove []string
	}{
		{"CA key", []string{"ca-key.pem"}},
		{"one client certificate", []string{filepath.Join("probation", "client.pem")}},
		{"the operator", []string{filepath.Join("operator", "client.pem"), filepath.Join("operator", "client-key.pem")}},
		// Every agency could join from the CA, but the operator's certificate is gone.
		{"everything but the CA", everythingBut(t, "ca.pem", "ca-key.pem")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ensure(t, dir, now())
			caBefore, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range tt.remove {
				if err := os.Remove(filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}

			_, err = certs.Ensure(dir, testAgencies, now())
			if err == nil {
				t.Fatal("Ensure of a partial set: got no error")
			}
			for _, name := range tt.remove {
				if !strings.Contains(err.Error(), name) && (tt.name != "everything but the CA" || strings.HasPrefix(name, "operator")) {
					t.Errorf("error %q does not name missing %s", err, name)
				}
				if _, statErr := os.Stat(filepath.Join(dir, name)); statErr == nil {
					t.Errorf("%s was recreated", name)
				}
			}
			caAfter, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(caAfter, caBefore) {
				t.Error("ca.pem changed")
			}
		})
	}
}

// An agency with none of its files yet joins: Ensure issues them from the CA it has.
func TestEnsureIssuesAJoiningAgencyFromTheSameCA(t *testing.T) {
	dir := t.TempDir()
	ensure(t, dir, now())
	caBefore, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := certs.Ensure(dir, append(slices.Clone(testAgencies), "pcve"), now())
	if err != nil {
		t.Fatalf("Ensure with a joining agency: %v", err)
	}
	caAfter, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if !bytes.Equal(caAfter, caBefore) {
		t.Error("ca.pem changed")
	}
	if _, err := b.ServerTLS("pcve"); err != nil {
		t.Errorf("server TLS of the joining agency: %v", err)
	}
	if _, err := b.ClientTLS("pcve"); err != nil {
		t.Errorf("client TLS of the joining agency: %v", err)
	}
	// Loaded again, the set with the new agency verifies against the same CA.
	if _, err := certs.Ensure(dir, append(slices.Clone(testAgencies), "pcve"), now()); err != nil {
		t.Errorf("Ensure again: %v", err)
	}
}

// everythingBut lists the set's files relative to its directory, without keep.
func everythingBut(t *testing.T, keep ...string) []string {
	t.Helper()
	dir := t.TempDir()
	var names []string
	for _, path := range setFiles(ensure(t, dir, now())) {
		name, err := filepath.Rel(dir, path)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(keep, name) {
			names = append(names, name)
		}
	}
	return names
}

func TestEnsureRefusesUnusableSet(t *testing.T) {
	t.Run("expired", func(t *testing.T) {
		dir := t.TempDir()
		at := now()
		ensure(t, dir, at)
		_, err := certs.Ensure(dir, testAgencies, at.AddDate(3, 0, 0))
		if err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("Ensure three years on: got %v, want an error saying the set expired", err)
		}
	})
	t.Run("client certificate in the wrong place", func(t *testing.T) {
		dir := t.TempDir()
		b := ensure(t, dir, now())
		probationCert, probationKey := b.ClientFiles("probation")
		prisonCert, prisonKey := b.ClientFiles("prison")
		copyFile(t, probationCert, prisonCert)
		copyFile(t, probationKey, prisonKey)
		_, err := certs.Ensure(dir, testAgencies, now())
		if err == nil || !strings.Contains(err.Error(), "spiffe://throughcare/agency/prison") {
			t.Fatalf("Ensure with probation's certificate as prison's: got %v, want an error naming prison's identity", err)
		}
	})
	t.Run("CA replaced", func(t *testing.T) {
		dir := t.TempDir()
		b := ensure(t, dir, now())
		other := ensure(t, t.TempDir(), now())
		copyFile(t, other.CAFile(), b.CAFile())
		copyFile(t, other.CAKeyFile(), b.CAKeyFile())
		if _, err := certs.Ensure(dir, testAgencies, now()); err == nil {
			t.Fatal("Ensure with another CA: got no error")
		}
	})
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoadCA(t *testing.T) {
	b := ensure(t, t.TempDir(), now())
	ca, err := certs.LoadCA(b.CAFile(), b.CAKeyFile())
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if !ca.Certificate().Equal(readCert(t, b.CAFile())) {
		t.Error("LoadCA returned another certificate than ca.pem")
	}
	certFile, keyFile := b.ServerFiles("prison")
	if _, err := certs.LoadCA(certFile, keyFile); err == nil {
		t.Error("LoadCA of a server certificate: got no error")
	}
}

func TestTLSConfigs(t *testing.T) {
	at := now()
	b := ensure(t, t.TempDir(), at)
	serverTLS, err := b.ServerTLS("prison")
	if err != nil {
		t.Fatal(err)
	}
	if serverTLS.MinVersion != tls.VersionTLS13 || serverTLS.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatalf("server TLS: got min version %x, client auth %v; want TLS 1.3 and a verified client certificate", serverTLS.MinVersion, serverTLS.ClientAuth)
	}
	stranger, err := certs.NewCA("stranger", at)
	if err != nil {
		t.Fatal(err)
	}
	strangerCert, err := stranger.IssueClient(certs.AgencyURI("prison"), at.Add(-time.Hour), at.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		identity string
		adjust   func(*tls.Config)
		wantOK   bool
	}{
		{name: "own client", identity: "prison", wantOK: true},
		{name: "operator", identity: certs.Operator, wantOK: true},
		{name: "no client certificate", identity: "prison", adjust: func(c *tls.Config) { c.Certificates = nil }},
		{name: "certificate of another CA", identity: "prison", adjust: func(c *tls.Config) { c.Certificates = []tls.Certificate{strangerCert} }},
		{name: "TLS 1.2", identity: "prison", adjust: func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12 }},
		{name: "another agency's server", identity: "probation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clientTLS, err := b.ClientTLS(tt.identity)
			if err != nil {
				t.Fatal(err)
			}
			if tt.adjust != nil {
				tt.adjust(clientTLS)
			}
			clientErr, serverErr := handshake(t, serverTLS, clientTLS)
			if ok := clientErr == nil && serverErr == nil; ok != tt.wantOK {
				t.Errorf("handshake: client %v, server %v; want success %v", clientErr, serverErr, tt.wantOK)
			}
		})
	}

	if _, err := b.ServerTLS("police"); err == nil {
		t.Error("ServerTLS of an unknown agency: got no error")
	}
	if _, err := b.ClientTLS("police"); err == nil {
		t.Error("ClientTLS of an unknown identity: got no error")
	}
}

// handshake runs one TLS handshake over loopback and returns each side's error. The client
// reads one byte, so that a TLS 1.3 client also hears when the server refuses its
// certificate after the client's half of the handshake is done.
func handshake(t *testing.T, serverTLS, clientTLS *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	served := make(chan error, 1)
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			served <- err
			return
		}
		defer conn.Close()
		err = conn.(*tls.Conn).Handshake()
		if err == nil {
			_, err = conn.Write([]byte{1})
		}
		served <- err
	}()
	conn, err := tls.Dial("tcp", lis.Addr().String(), clientTLS)
	if err == nil {
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	return err, <-served
}

func TestIssueClientRefusesRelativeURI(t *testing.T) {
	ca, err := certs.NewCA("test", now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.IssueClient("agency/prison", now(), now().Add(time.Hour)); err == nil {
		t.Error("IssueClient of a relative URI: got no error")
	}
}
