package main

import (
	"fmt"
	"io"
	"time"

	"github.com/throughcare/throughcare/pkg/certs"
)

// runCerts creates the local PKI in <data-dir>/certs, or loads and checks the one there,
// and says where each file is and what it is for.
func runCerts(cfg certsConfig, stdout io.Writer) error {
	sharing, err := cfg.Protocol.loadProtocol()
	if err != nil {
		return err
	}
	agencies := sharing.Agencies()
	b, err := certs.Ensure(cfg.CertsDir(), agencies.IDs(), time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "certificates in %s\n  CA SHA-256 %s\n\n", b.Dir(), b.CAFingerprint())
	fmt.Fprintf(stdout, "  %-44s trusted by every server and client\n", b.CAFile())
	fmt.Fprintf(stdout, "  %-44s issues certificates: keep it secret\n", b.CAKeyFile())
	for _, agency := range agencies.IDs() {
		cert, _ := b.ServerFiles(agency)
		fmt.Fprintf(stdout, "  %-44s %s's service (serve --tls-cert; key beside it)\n", cert, agencies.Name(agency))
		cert, _ = b.ClientFiles(agency)
		fmt.Fprintf(stdout, "  %-44s %s's own system, %s\n", cert, agencies.Name(agency), certs.AgencyURI(agency))
	}
	cert, _ := b.ClientFiles(certs.Operator)
	fmt.Fprintf(stdout, "  %-44s an operator, %s: read-only operator methods\n", cert, certs.OperatorURI)
	first := agencies.IDs()[0]
	fmt.Fprintf(stdout, "\nCall the %s as its own system (dev serves it on 127.0.0.1:7101):\n  %s 127.0.0.1:7101 list\n", agencies.Name(first), grpcurlTLS(b, first))
	return nil
}
