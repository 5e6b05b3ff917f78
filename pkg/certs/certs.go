// Package certs is throughcare's local PKI for mutual TLS: one CA, a server and a client
// certificate per agency, and an operator's client certificate. `throughcare certs` and
// `throughcare dev` create it on a laptop with Ensure; in a cluster the same kind of files
// come from mounted secrets and are read with LoadServerTLS and LoadClientTLS.
//
// A client certificate says who calls in one URI SAN:
//
//	spiffe://throughcare/agency/<agency>   that agency's own system
//	spiffe://throughcare/operator          an operator
//
// On disk, under one directory:
//
//	ca.pem  ca-key.pem
//	<agency>/server.pem  <agency>/server-key.pem  <agency>/client.pem  <agency>/client-key.pem
//	operator/client.pem  operator/client-key.pem
package certs

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

const (
	// AgencyURIPrefix followed by an agency's name identifies that agency's own system.
	AgencyURIPrefix = "spiffe://throughcare/agency/"
	// OperatorURI identifies an operator.
	OperatorURI = "spiffe://throughcare/operator"
	// Operator is the identity of the operator's client certificate in a Bundle.
	Operator = "operator"
)

const (
	localCAName = "throughcare local CA"
	caYears     = 10
	leafYears   = 2
	// backdate lets a certificate be used at once by a machine whose clock is a little behind.
	backdate = 5 * time.Minute
)

// AgencyURI is the identity of agency's own system.
func AgencyURI(agency string) string { return AgencyURIPrefix + agency }

func (b *Bundle) isAgency(name string) bool { return slices.Contains(b.agencies, name) }

// serverHosts are the names an agency's server answers to: on a laptop, in a compose file
// and in a cluster namespace.
func serverHosts(agency string) []string {
	return []string{"localhost", agency, agency + ".throughcare", "127.0.0.1", "::1"}
}

// pairFiles names a certificate and its key, relative to the bundle's directory.
type pairFiles struct{ cert, key string }

func caFiles() pairFiles { return pairFiles{cert: "ca.pem", key: "ca-key.pem"} }

func serverFiles(agency string) pairFiles {
	return pairFiles{cert: filepath.Join(agency, "server.pem"), key: filepath.Join(agency, "server-key.pem")}
}

func clientFiles(identity string) pairFiles {
	return pairFiles{cert: filepath.Join(identity, "client.pem"), key: filepath.Join(identity, "client-key.pem")}
}

// leaf is one certificate of the set that the CA issues.
type leaf struct {
	files pairFiles
	usage x509.ExtKeyUsage
	// uri is a client certificate's identity; empty for a server certificate.
	uri   string
	issue func(ca *CA, now time.Time) (tls.Certificate, error)
}

// agencyLeaves are the certificates of one agency: its server's, and its own system's.
func agencyLeaves(agency string) []leaf {
	return []leaf{
		{files: serverFiles(agency), usage: x509.ExtKeyUsageServerAuth, issue: func(ca *CA, now time.Time) (tls.Certificate, error) {
			return ca.IssueServer(serverHosts(agency), now.Add(-backdate), now.AddDate(leafYears, 0, 0))
		}},
		clientLeaf(agency, AgencyURI(agency)),
	}
}

func leaves(agencies []string) []leaf {
	var all []leaf
	for _, agency := range agencies {
		all = append(all, agencyLeaves(agency)...)
	}
	return append(all, clientLeaf(Operator, OperatorURI))
}

func clientLeaf(identity, uri string) leaf {
	return leaf{files: clientFiles(identity), usage: x509.ExtKeyUsageClientAuth, uri: uri, issue: func(ca *CA, now time.Time) (tls.Certificate, error) {
		return ca.IssueClient(uri, now.Add(-backdate), now.AddDate(leafYears, 0, 0))
	}}
}

// Bundle is a complete local PKI on disk.
type Bundle struct {
	dir      string
	ca       *x509.Certificate
	agencies []string
}

// Ensure loads the set for agencies in dir, or creates it when dir holds none of it. An
// agency with none of its files yet (one that joined) gets them from the CA in dir. It
// never overwrites a file: any other partial set is an error naming what is missing,
// because a new CA would make every certificate already handed out worthless. A loaded set
// must be valid at now.
func Ensure(dir string, agencies []string, now time.Time) (*Bundle, error) {
	var (
		ca  *CA
		err error
	)
	present, missing, err := inventory(dir, append([]pairFiles{caFiles()}, leafFiles(leaves(agencies))...))
	switch {
	case err != nil:
	case len(missing) == 0:
		ca, err = load(dir, agencies, now)
	case len(present) == 0:
		ca, err = create(dir, leaves(agencies), now)
	default:
		ca, err = join(dir, agencies, now)
	}
	if err != nil {
		return nil, fmt.Errorf("certs in %s: %w", dir, err)
	}
	return &Bundle{dir: dir, ca: ca.cert, agencies: slices.Clone(agencies)}, nil
}

// inventory sorts the files of pairs into those in dir and those not.
func inventory(dir string, pairs []pairFiles) (present, missing []string, err error) {
	for _, files := range pairs {
		for _, name := range []string{files.cert, files.key} {
			_, err := os.Stat(filepath.Join(dir, name))
			switch {
			case err == nil:
				present = append(present, name)
			case errors.Is(err, fs.ErrNotExist):
				missing = append(missing, name)
			default:
				return nil, nil, err
			}
		}
	}
	return present, missing, nil
}

// join issues the certificates of every agency that has none yet from the CA in dir, then
// loads the set. Anything else missing is an incomplete set.
func join(dir string, agencies []string, now time.Time) (*CA, error) {
	var joining []leaf
	var incomplete []string
	for _, agency := range agencies {
		present, missing, err := inventory(dir, leafFiles(agencyLeaves(agency)))
		if err != nil {
			return nil, err
		}
		if len(present) == 0 {
			joining = append(joining, agencyLeaves(agency)...)
		} else {
			incomplete = append(incomplete, missing...)
		}
	}
	_, missing, err := inventory(dir, []pairFiles{caFiles(), clientFiles(Operator)})
	if err != nil {
		return nil, err
	}
	incomplete = append(missing, incomplete...)
	if len(incomplete) > 0 {
		return nil, fmt.Errorf("incomplete set, missing %s; restore them, or move the directory away to issue a new set (certificates from the old one will then be refused)", strings.Join(incomplete, ", "))
	}
	ca, err := LoadCA(filepath.Join(dir, caFiles().cert), filepath.Join(dir, caFiles().key))
	if err != nil {
		return nil, err
	}
	if err := write(dir, ca, joining, now); err != nil {
		return nil, err
	}
	return load(dir, agencies, now)
}

func leafFiles(ls []leaf) []pairFiles {
	files := make([]pairFiles, len(ls))
	for i, l := range ls {
		files[i] = l.files
	}
	return files
}

// load reads the set and checks that every pair matches, chains to the CA for its use,
// is valid at now, and that each client certificate names the identity its place says.
func load(dir string, agencies []string, now time.Time) (*CA, error) {
	ca, err := LoadCA(filepath.Join(dir, caFiles().cert), filepath.Join(dir, caFiles().key))
	if err != nil {
		return nil, err
	}
	roots := ca.Pool()
	for _, l := range leaves(agencies) {
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, l.files.cert), filepath.Join(dir, l.files.key))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", l.files.cert, err)
		}
		opts := x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{l.usage}}
		if _, err := pair.Leaf.Verify(opts); err != nil {
			return nil, fmt.Errorf("%s: %w; move the directory away to issue a new set", l.files.cert, err)
		}
		if l.uri != "" && (len(pair.Leaf.URIs) != 1 || pair.Leaf.URIs[0].String() != l.uri) {
			return nil, fmt.Errorf("%s: does not name %s", l.files.cert, l.uri)
		}
	}
	return ca, nil
}

// create makes a CA and issues every leaf from it.
func create(dir string, ls []leaf, now time.Time) (*CA, error) {
	ca, err := NewCA(localCAName, now)
	if err != nil {
		return nil, err
	}
	if err := write(dir, ca, ls, now, issued{files: caFiles(), cert: ca.pair()}); err != nil {
		return nil, err
	}
	return ca, nil
}

type issued struct {
	files pairFiles
	cert  tls.Certificate
}

// write issues ls from ca before writing any of it (after the pairs given), so that a
// failure to issue leaves no files behind; a failure to write removes what this call wrote.
func write(dir string, ca *CA, ls []leaf, now time.Time, set ...issued) (err error) {
	for _, l := range ls {
		cert, err := l.issue(ca, now)
		if err != nil {
			return fmt.Errorf("%s: %w", l.files.cert, err)
		}
		set = append(set, issued{files: l.files, cert: cert})
	}
	var written []string
	defer func() {
		if err != nil {
			for _, path := range written {
				_ = os.Remove(path)
			}
		}
	}()
	for _, pair := range set {
		certPEM, keyPEM, err := encodePEM(pair.cert)
		if err != nil {
			return fmt.Errorf("%s: %w", pair.files.key, err)
		}
		for _, file := range []struct {
			name string
			data []byte
			perm fs.FileMode
		}{{pair.files.cert, certPEM, 0o644}, {pair.files.key, keyPEM, 0o600}} {
			path := filepath.Join(dir, file.name)
			if err := writeNew(path, file.data, file.perm); err != nil {
				return err
			}
			written = append(written, path)
		}
	}
	return nil
}

// writeNew writes a file that must not exist yet, in a directory only its owner may enter.
func writeNew(path string, data []byte, perm fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(path)
		return err
	}
	return nil
}

// Dir is the directory the set lives in.
func (b *Bundle) Dir() string { return b.dir }

// CAFile and CAKeyFile are the CA's certificate and key.
func (b *Bundle) CAFile() string    { return filepath.Join(b.dir, caFiles().cert) }
func (b *Bundle) CAKeyFile() string { return filepath.Join(b.dir, caFiles().key) }

// ServerFiles are agency's server certificate and key.
func (b *Bundle) ServerFiles(agency string) (certFile, keyFile string) {
	files := serverFiles(agency)
	return filepath.Join(b.dir, files.cert), filepath.Join(b.dir, files.key)
}

// ClientFiles are the client certificate and key of identity: an agency or Operator.
func (b *Bundle) ClientFiles(identity string) (certFile, keyFile string) {
	files := clientFiles(identity)
	return filepath.Join(b.dir, files.cert), filepath.Join(b.dir, files.key)
}

// CAFingerprint is the SHA-256 of the CA certificate as openssl prints it, for a person to
// compare two machines' sets.
func (b *Bundle) CAFingerprint() string {
	sum := sha256.Sum256(b.ca.Raw)
	parts := make([]string, len(sum))
	for i, octet := range sum {
		parts[i] = fmt.Sprintf("%02X", octet)
	}
	return strings.Join(parts, ":")
}

// ServerTLS is the TLS configuration of agency's server: it requires a client certificate
// from the bundle's CA.
func (b *Bundle) ServerTLS(agency string) (*tls.Config, error) {
	if !b.isAgency(agency) {
		return nil, fmt.Errorf("server TLS: unknown agency %q (want one of %s)", agency, strings.Join(b.agencies, ", "))
	}
	certFile, keyFile := b.ServerFiles(agency)
	return LoadServerTLS(b.CAFile(), certFile, keyFile)
}

// ClientTLS is the TLS configuration of identity, an agency or Operator, as a client. An
// agency's system expects its own agency's server; an operator reaches every agency's
// server as "localhost".
func (b *Bundle) ClientTLS(identity string) (*tls.Config, error) {
	var serverName string
	switch {
	case b.isAgency(identity):
		serverName = identity
	case identity == Operator:
		serverName = "localhost"
	default:
		return nil, fmt.Errorf("client TLS: unknown identity %q (want one of %s or %s)", identity, strings.Join(b.agencies, ", "), Operator)
	}
	certFile, keyFile := b.ClientFiles(identity)
	return LoadClientTLS(b.CAFile(), certFile, keyFile, serverName)
}
