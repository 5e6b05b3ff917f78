package natsserver

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/throughcare/throughcare/pkg/agency"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/flow"
)

// SystemAccount is the server's own account, for monitoring and server events.
const SystemAccount = "SYS"

// OperatorAccount holds the operators' FLOW stream and nothing else (package flow): its
// user's JetStream reaches no stream that holds a payload.
const OperatorAccount = "OPERATOR"

// Buckets are the Key-Value buckets every agency keeps, as <agency>_<bucket>; they must
// match the buckets cmd/throughcare, pkg/handover and pkg/signing open: an agency's user
// may write to no other. seen_events is the replay guard of signed events (on main).
var Buckets = []string{"cases", "handovers", "deadletters", "seen_events"}

// AccountName is the NATS account an agency's service runs in, e.g. PRISON.
func AccountName(a string) string { return strings.ToUpper(a) }

// Accounts is the least-privilege NATS tenancy of throughcare: one account per agency,
// each with JetStream of its own, plus the system account. Each agency's account holds
// only its own outbox, inbox, ledger and buckets; the only way across is an inbox sourcing
// another agency's outbox, through exports that the source account grants to the
// recipient alone and that carry only what is addressed to it (see eventbus.External).
//
// Users are nkeys: the server knows public keys only, each service holds its own seed.
type Accounts struct {
	// Agencies are the deployment's parties: an account each, and an export and import
	// only between two that a protocol rule links.
	Agencies *agency.Registry
	// Users maps each agency to the public nkey (U...) of its service user.
	Users map[string]string
	// SystemUser is the public nkey of the system account's user; empty leaves the
	// system account without users.
	SystemUser string
	// OperatorUser is the public nkey of the operators' user; empty leaves out the
	// operator account, and agencies publish no flow records anywhere.
	OperatorUser string
}

// Validate checks that every agency has a user with a valid public user nkey.
func (a Accounts) Validate() error {
	if a.Agencies == nil {
		return errors.New("accounts: no agencies")
	}
	var errs []error
	for _, ag := range a.Agencies.IDs() {
		if !nkeys.IsValidPublicUserKey(a.Users[ag]) {
			errs = append(errs, fmt.Errorf("accounts: %s has no valid public user nkey", ag))
		}
	}
	if a.SystemUser != "" && !nkeys.IsValidPublicUserKey(a.SystemUser) {
		errs = append(errs, errors.New("accounts: system user is not a valid public user nkey"))
	}
	if a.OperatorUser != "" && !nkeys.IsValidPublicUserKey(a.OperatorUser) {
		errs = append(errs, errors.New("accounts: operator user is not a valid public user nkey"))
	}
	return errors.Join(errs...)
}

// Conf renders the accounts as nats-server configuration: what `throughcare dev` loads
// into the embedded server and what deploy/nats/nats-server.conf holds for production.
func (a Accounts) Conf() (string, error) {
	if err := a.Validate(); err != nil {
		return "", err
	}
	var operator string
	if a.OperatorUser != "" {
		operator = quote(a.OperatorUser)
	}
	return renderAccounts(a.Agencies, func(ag string) string { return quote(a.Users[ag]) }, quote(a.SystemUser), a.SystemUser != "", operator), nil
}

// ConfTemplate renders the accounts with each user's public nkey read from an environment
// variable when the server starts (THROUGHCARE_<ACCOUNT>_NKEY), for deploy/nats.
func ConfTemplate(agencies *agency.Registry) string {
	return renderAccounts(agencies, func(ag string) string { return "$" + NKeyEnv(AccountName(ag)) }, "$"+NKeyEnv(SystemAccount), true, "$"+NKeyEnv(OperatorAccount))
}

// NKeyEnv is the environment variable holding the public nkey of account's user in the
// deploy template.
func NKeyEnv(account string) string { return "THROUGHCARE_" + account + "_NKEY" }

// InboxPrefix is the prefix of the agency's reply and delivery inboxes: its user may
// subscribe there and nowhere else. Connections must set nats.CustomInboxPrefix to it.
func InboxPrefix(a string) string { return "_INBOX_" + a }

// Permissions an agency's user has within its own account: its own subjects, its own
// buckets, the JetStream API of its account (which holds nothing of other agencies), and
// replies on its own inbox prefix only; beyond its account, the bodies of the events its
// peers address to it.
func userPermissions(a string, peers []string) (pubAllow, pubDeny, subAllow []string) {
	tok := a
	pubAllow = []string{
		"tc." + tok + ".>",          // outbox tc.<agency>.out.> and ledger tc.<agency>.ledger
		flow.PublisherSubjects(tok), // its flow records, into the operators' account
	}
	for _, b := range Buckets {
		pubAllow = append(pubAllow, "$KV."+tok+"_"+b+".>")
	}
	pubAllow = append(pubAllow,
		"$JS.API.>", // the account's own JetStream only
		"$JS.ACK.>", // acks of its own consumers
		"$JS.FC.>",  // flow-control replies of its own watchers
	)
	for _, src := range peers {
		pubAllow = append(pubAllow, eventbus.External(src, a).ImportedBodyGet)
	}
	// Services create and update streams; they never delete them.
	pubDeny = []string{"$JS.API.STREAM.DELETE.>"}
	subAllow = []string{InboxPrefix(a) + ".>"}
	return pubAllow, pubDeny, subAllow
}

// OperatorInboxPrefix is the operators' reply and delivery inbox prefix.
const OperatorInboxPrefix = "_INBOX_operator"

// operatorPermissions: the JetStream API of the operator account, which holds the FLOW
// stream only, read-only in effect: nothing deleted or purged, no flow record forged.
func operatorPermissions() (pubAllow, pubDeny, subAllow []string) {
	pubAllow = []string{"$JS.API.>", "$JS.ACK.>", "$JS.FC.>"}
	pubDeny = []string{"$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>", "flow.>"}
	subAllow = []string{OperatorInboxPrefix + ".>"}
	return pubAllow, pubDeny, subAllow
}

// renderAccounts writes the configuration; an empty operatorUser leaves out the operator
// account.
func renderAccounts(agencies *agency.Registry, userRef func(string) string, sysUser string, withSysUser bool, operatorUser string) string {
	var b strings.Builder
	w := func(indent int, format string, args ...any) {
		b.WriteString(strings.Repeat("  ", indent))
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	list := func(xs []string) string {
		q := make([]string, len(xs))
		for i, x := range xs {
			q[i] = quote(x)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	w(0, "# Generated by natsserver.Accounts: one account per agency, JetStream per account.")
	w(0, "system_account: %s", SystemAccount)
	w(0, "accounts: {")
	if withSysUser {
		w(1, "%s: {", SystemAccount)
		w(2, "users: [{nkey: %s}]", sysUser)
		w(1, "}")
	} else {
		w(1, "%s: {}", SystemAccount)
	}
	if operatorUser != "" {
		pubAllow, pubDeny, subAllow := operatorPermissions()
		w(1, "%s: {", OperatorAccount)
		w(2, "jetstream: enabled")
		w(2, "users: [{")
		w(3, "nkey: %s", operatorUser)
		w(3, "permissions: {")
		w(4, "publish: {allow: %s, deny: %s}", list(pubAllow), list(pubDeny))
		w(4, "subscribe: {allow: %s}", list(subAllow))
		w(3, "}")
		w(2, "}]")
		w(2, "exports: [")
		w(3, "# each agency publishes its own flow records into FLOW, and nothing else")
		for _, ag := range agencies.IDs() {
			w(3, "{service: %s, accounts: [%s]}", quote(flow.PublisherSubjects(ag)), AccountName(ag))
		}
		w(2, "]")
		w(1, "}")
	}
	for _, ag := range agencies.IDs() {
		name := AccountName(ag)
		pubAllow, pubDeny, subAllow := userPermissions(ag, agencies.Peers(ag))
		w(1, "%s: {", name)
		w(2, "jetstream: enabled")
		w(2, "users: [{")
		w(3, "nkey: %s", userRef(ag))
		w(3, "permissions: {")
		w(4, "publish: {allow: %s, deny: %s}", list(pubAllow), list(pubDeny))
		w(4, "subscribe: {allow: %s}", list(subAllow))
		w(3, "}")
		w(2, "}]")
		w(2, "exports: [")
		var others []string
		for _, rcpt := range agencies.Peers(ag) {
			others = append(others, AccountName(rcpt))
			ext := eventbus.External(ag, rcpt)
			w(3, "# %s may source from OUTBOX_%s only what is addressed to it", AccountName(rcpt), name)
			w(3, "{service: %s, accounts: [%s]}", quote(ext.ExportedConsumerCreate), AccountName(rcpt))
			w(3, "{stream: %s, accounts: [%s]}", quote(ext.DeliverPrefix+".>"), AccountName(rcpt))
			w(3, "# %s may read from OUTBOX_%s the bodies of only what is addressed to it", AccountName(rcpt), name)
			w(3, "{service: %s, accounts: [%s]}", quote(ext.ExportedBodyGet), AccountName(rcpt))
		}
		w(3, "# flow control of the sourcing consumers on OUTBOX_%s (server 2.14+ v1 and v2 formats)", name)
		if len(others) > 0 {
			for _, fc := range flowControlSubjects(ag) {
				w(3, "{service: %s, accounts: [%s]}", quote(fc), strings.Join(others, ", "))
			}
		}
		w(2, "]")
		w(2, "imports: [")
		if operatorUser != "" {
			w(3, "{service: {account: %s, subject: %s}}", OperatorAccount, quote(flow.PublisherSubjects(ag)))
		}
		for _, src := range agencies.Peers(ag) {
			ext := eventbus.External(src, ag)
			w(3, "# INBOX_%s sources OUTBOX_%s through these", name, AccountName(src))
			w(3, "{service: {account: %s, subject: %s}, to: %s}", AccountName(src), quote(ext.ExportedConsumerCreate), quote(ext.ImportedConsumerCreate))
			w(3, "{stream: {account: %s, subject: %s}}", AccountName(src), quote(ext.DeliverPrefix+".>"))
			w(3, "{service: {account: %s, subject: %s}, to: %s}", AccountName(src), quote(ext.ExportedBodyGet), quote(ext.ImportedBodyGet))
			for _, fc := range flowControlSubjects(src) {
				w(3, "{service: {account: %s, subject: %s}}", AccountName(src), quote(fc))
			}
		}
		w(2, "]")
		w(1, "}")
	}
	w(0, "}")
	return b.String()
}

// flowControlSubjects are where the recipients' inboxes answer the flow control of the
// consumers sourcing source's outbox, in both formats nats-server 2.14+ uses:
//
//	v1 $JS.FC.<stream>.<consumer>.<id>                          (the default up to 2.15)
//	v2 $JS.FC.<domain>.<account hash>.<stream>.<consumer>.<id>  (feature flag js_ack_fc_v2)
//
// Without them a source stalls once the consumer's flow-control window is full. The v2
// form is spelled out (no JetStream domain, "_", and the hash of the source account) so
// it cannot overlap another account's v1 form, which the server would refuse as an
// import cycle. Sourcing consumers do not ack (AckNone): no $JS.ACK subject is needed.
func flowControlSubjects(source string) []string {
	stream := eventbus.OutboxStream(source)
	return []string{
		"$JS.FC." + stream + ".>",
		"$JS.FC._." + accountHash(AccountName(source)) + "." + stream + ".>",
	}
}

// accountHash is the server's 8-character hash of an account name (getHash in
// nats-server events.go), used in v2 ack and flow-control subjects.
func accountHash(name string) string {
	const digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	sum := sha256.Sum256([]byte(name))
	b := make([]byte, 8)
	for i := range b {
		b[i] = digits[int(sum[i]%62)]
	}
	return string(b)
}

func quote(s string) string { return `"` + s + `"` }

// Credentials are the nkey seeds of every user, as files under one directory.
type Credentials struct {
	Dir string
	// Accounts carries the public keys, for the server.
	Accounts Accounts
}

// SeedFile is where the seed of account's user is kept.
func (c Credentials) SeedFile(account string) string {
	return filepath.Join(c.Dir, strings.ToLower(account)+".nk")
}

// AgencySeedFile is where the agency's service user seed is kept.
func (c Credentials) AgencySeedFile(a string) string {
	return c.SeedFile(AccountName(a))
}

// LoadOrCreateCredentials reads the user seeds under dir, creating those missing: the
// directory 0700, each seed file 0600. A seed file open to others is refused.
func LoadOrCreateCredentials(dir string, agencies *agency.Registry) (Credentials, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Credentials{}, fmt.Errorf("credentials: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return Credentials{}, fmt.Errorf("credentials: %w", err)
	}
	c := Credentials{Dir: dir, Accounts: Accounts{Agencies: agencies, Users: map[string]string{}}}
	for _, ag := range agencies.IDs() {
		pub, err := loadOrCreateUser(c.AgencySeedFile(ag))
		if err != nil {
			return Credentials{}, err
		}
		c.Accounts.Users[ag] = pub
	}
	pub, err := loadOrCreateUser(c.SeedFile(SystemAccount))
	if err != nil {
		return Credentials{}, err
	}
	c.Accounts.SystemUser = pub
	if c.Accounts.OperatorUser, err = loadOrCreateUser(c.SeedFile(OperatorAccount)); err != nil {
		return Credentials{}, err
	}
	return c, nil
}

// loadOrCreateUser returns the public key of the user seed in path, creating it first.
func loadOrCreateUser(path string) (string, error) {
	seed, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return "", fmt.Errorf("credentials: create user key: %w", err)
		}
		seed, err = kp.Seed()
		if err != nil {
			return "", fmt.Errorf("credentials: %w", err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return "", fmt.Errorf("credentials: %w", err)
		}
		_, werr := f.Write(append(seed, '\n'))
		if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
			return "", fmt.Errorf("credentials: write %s: %w", path, err)
		}
	} else if err != nil {
		return "", fmt.Errorf("credentials: %w", err)
	} else if st, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("credentials: %w", err)
	} else if !privateMode(st.Mode()) {
		return "", fmt.Errorf("credentials: %s is open to others (mode %v); want 0600", path, st.Mode().Perm())
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
	if err != nil {
		return "", fmt.Errorf("credentials: %s: %w", path, err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return "", fmt.Errorf("credentials: %s: %w", path, err)
	}
	if !nkeys.IsValidPublicUserKey(pub) {
		return "", fmt.Errorf("credentials: %s is not a user seed", path)
	}
	return pub, nil
}

// ConnectOptions are what the agency's service connects with: its own nkey and its own
// inbox prefix, the only subjects it may subscribe to.
func (c Credentials) ConnectOptions(a string) ([]nats.Option, error) {
	return AgencyConnectOptions(a, c.AgencySeedFile(a))
}

// AgencyConnectOptions are ConnectOptions from the seed file of agency's user, as a
// deployed service reads it. A seed file open to others is refused.
func AgencyConnectOptions(a string, seedFile string) ([]nats.Option, error) {
	if st, err := os.Stat(seedFile); err != nil {
		return nil, fmt.Errorf("credentials of %s: %w", a, err)
	} else if !privateMode(st.Mode()) {
		return nil, fmt.Errorf("credentials of %s: %s is open to others (mode %v); want 0600 or 0400", a, seedFile, st.Mode().Perm())
	}
	auth, err := nats.NkeyOptionFromSeed(seedFile)
	if err != nil {
		return nil, fmt.Errorf("credentials of %s: %w", a, err)
	}
	return []nats.Option{auth, nats.CustomInboxPrefix(InboxPrefix(a))}, nil
}

// privateMode reports whether a seed file is closed to others: no access for others and
// no group write. Group read is tolerated, as Kubernetes grants it to fsGroup on
// mounted secrets; the files this package writes are 0600.
func privateMode(m os.FileMode) bool { return m.Perm()&0o027 == 0 }

// SystemConnectOptions are the system user's, for monitoring.
func (c Credentials) SystemConnectOptions() ([]nats.Option, error) {
	auth, err := nats.NkeyOptionFromSeed(c.SeedFile(SystemAccount))
	if err != nil {
		return nil, fmt.Errorf("credentials of the system user: %w", err)
	}
	return []nats.Option{auth}, nil
}

// OperatorConnectOptions are what an operator's tools connect with: the operators' nkey
// from seedFile (Credentials.SeedFile(OperatorAccount) in dev) and its inbox prefix.
func OperatorConnectOptions(seedFile string) ([]nats.Option, error) {
	if st, err := os.Stat(seedFile); err != nil {
		return nil, fmt.Errorf("operator credentials: %w", err)
	} else if !privateMode(st.Mode()) {
		return nil, fmt.Errorf("operator credentials: %s is open to others (mode %v); want 0600 or 0400", seedFile, st.Mode().Perm())
	}
	auth, err := nats.NkeyOptionFromSeed(seedFile)
	if err != nil {
		return nil, fmt.Errorf("operator credentials: %w", err)
	}
	return []nats.Option{auth, nats.CustomInboxPrefix(OperatorInboxPrefix)}, nil
}
