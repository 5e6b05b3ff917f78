package certs

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// LoadServerTLS is a server's TLS configuration from PEM files, such as a mounted secret:
// TLS 1.3 only, and every client must present a certificate issued by the CA in caFile.
// The files are read once; a rotated certificate takes effect on restart.
func LoadServerTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	clientCAs, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load server certificate: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
	}, nil
}

// LoadClientTLS is a client's TLS configuration from PEM files: TLS 1.3 only, trusting only
// the CA in caFile, and expecting the server to be serverName. An empty serverName lets
// gRPC take the host of the address dialled.
func LoadClientTLS(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	roots, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load client certificate: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ServerName:   serverName,
	}, nil
}

func loadPool(caFile string) (*x509.CertPool, error) {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("load CA: %s holds no PEM certificate", caFile)
	}
	return pool, nil
}
