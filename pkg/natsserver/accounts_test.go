package natsserver_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/natsserver"
	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/protocol"
)

// testAgencies are the default protocol's agencies.
var testAgencies = protocol.Default().Agencies()

const (
	prison     = "prison"
	probation  = "probation"
	socialWork = "socialwork"
)

// agencies starts the server with the agency accounts, with every agency's streams and
// prison's buckets in place.
func agencies(t *testing.T) *natstest.AgencyServer {
	t.Helper()
	srv := natstest.StartWithAgencies(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, a := range testAgencies.IDs() {
		if err := eventbus.SetupOutbox(ctx, srv.JetStreamAs(t, a), a, eventbus.DefaultLimits); err != nil {
			t.Fatalf("outbox %s: %v", a, err)
		}
	}
	for _, a := range testAgencies.IDs() {
		if err := eventbus.SetupTopology(ctx, srv.JetStreamAs(t, a), a, testAgencies.Peers(a), eventbus.DefaultLimits, eventbus.AccountPerAgency); err != nil {
			t.Fatalf("setup %s: %v", a, err)
		}
	}
	kv, err := srv.JetStreamAs(t, prison).CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "prison_cases"})
	if err != nil {
		t.Fatalf("create prison_cases: %v", err)
	}
	if _, err := kv.Put(ctx, "rc_1", []byte("secret")); err != nil {
		t.Fatalf("put: %v", err)
	}
	return srv
}

// asyncErrs collects the errors the server sends a connection, such as permission
// violations on publish.
func asyncErrs() (nats.Option, <-chan error) {
	ch := make(chan error, 16)
	return nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case ch <- err:
		default:
		}
	}), ch
}

func wantPermissionViolation(t *testing.T, errs <-chan error, subject string) {
	t.Helper()
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), subject) {
			t.Errorf("error = %v, want a permission violation for %q", err, subject)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("no permission violation for %q", subject)
	}
}

func TestAgencyCannotSubscribeToAnotherAgencysSubjects(t *testing.T) {
	srv := agencies(t)
	quiet, _ := asyncErrs()
	nc := srv.ConnectAs(t, probation, nats.PermissionErrOnSubscribe(true), quiet)
	for _, subject := range []string{
		"_INBOX_socialwork.>", // social work's replies and consumer deliveries
		eventbus.External(prison, socialWork).DeliverPrefix + ".>", // what prison's outbox delivers to social work
		"tc.prison.out.socialwork.>",                               // prison's events for social work
		"$KV.prison_cases.>",                                       // prison's records
		"_INBOX.>",                                                 // anything but its own inbox prefix
	} {
		sub, err := nc.SubscribeSync(subject)
		if err != nil {
			t.Fatalf("subscribe %s: %v", subject, err)
		}
		if _, err := sub.NextMsg(5 * time.Second); !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("subscribe %s: NextMsg = %v, want a permission violation", subject, err)
		}
	}
}

func TestAgencyCannotPublishAsAnotherAgency(t *testing.T) {
	srv := agencies(t)
	opt, errs := asyncErrs()
	nc := srv.ConnectAs(t, probation, opt)
	for _, subject := range []string{
		"tc.prison.out.probation.handover_referred", // as prison, to itself
		"tc.prison.out.socialwork.handover_referred",
		"$KV.prison_cases.rc_1",
		eventbus.External(prison, probation).DeliverPrefix + ".S.fake", // straight into a delivery
	} {
		if err := nc.Publish(subject, []byte("forged")); err != nil {
			t.Fatalf("publish %s: %v", subject, err)
		}
		wantPermissionViolation(t, errs, subject)
	}
	// And JetStream refuses to acknowledge such a publish: it never reaches a stream.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, "tc.prison.out.probation.handover_referred", []byte("forged")); err == nil {
		t.Error("JetStream publish as prison succeeded")
	}
	if n := msgs(t, srv.JetStreamAs(t, prison), eventbus.OutboxStream(prison)); n != 0 {
		t.Errorf("prison's outbox holds %d forged messages", n)
	}
}

func TestAgencyCannotReachAnotherAgencysStreams(t *testing.T) {
	srv := agencies(t)
	opt, errs := asyncErrs()
	js, err := jetstream.New(srv.ConnectAs(t, probation, opt))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := js.KeyValue(ctx, "prison_cases"); err == nil {
		t.Error("probation opened prison_cases")
	}
	if _, err := js.Stream(ctx, "KV_prison_cases"); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("stream KV_prison_cases from probation: %v, want stream not found", err)
	}
	if _, err := js.Conn().Request("$JS.API.DIRECT.GET.KV_prison_cases.$KV.prison_cases.rc_1", nil, time.Second); err == nil {
		t.Error("direct get of prison's record from probation answered")
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, eventbus.InboxStream(socialWork), jetstream.ConsumerConfig{Durable: "snoop"}); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("consumer on INBOX_SOCIALWORK from probation: %v, want stream not found", err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, eventbus.OutboxStream(prison), jetstream.ConsumerConfig{Durable: "snoop"}); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("consumer on OUTBOX_PRISON from probation: %v, want stream not found", err)
	}
	// The imported consumer-create API is for probation's inbox, not its user: the user's
	// permissions refuse it whatever the filter (eventbus tests show that the import
	// itself serves only consumers filtered to what is addressed to probation).
	ext := eventbus.External(prison, probation)
	for _, filter := range []string{"tc.prison.out.probation.>", "tc.prison.out.socialwork.>", "tc.>"} {
		subject := ext.APIPrefix + ".CONSUMER.CREATE." + eventbus.OutboxStream(prison) + ".snoop." + filter
		if err := js.Conn().Publish(subject, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		wantPermissionViolation(t, errs, subject)
	}
	// Deleting one's own streams is refused too: services only create and update them.
	if err := js.DeleteStream(ctx, eventbus.InboxStream(probation)); err == nil {
		t.Error("probation deleted its inbox")
	}
	wantPermissionViolation(t, errs, "$JS.API.STREAM.DELETE."+eventbus.InboxStream(probation))
}

func TestConnectionsNeedAgencyCredentials(t *testing.T) {
	srv := agencies(t)
	if nc, err := nats.Connect(srv.URL(), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Error("connected without credentials")
	}
	// A key the server does not know.
	dir := t.TempDir()
	other, err := natsserver.LoadOrCreateCredentials(dir, testAgencies)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := other.ConnectOptions(prison)
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(srv.URL(), append(opts, nats.MaxReconnects(0))...); err == nil {
		nc.Close()
		t.Error("connected with an unknown nkey")
	}
	sys, err := srv.Creds.SystemConnectOptions()
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(srv.URL(), sys...)
	if err != nil {
		t.Fatalf("system user: %v", err)
	}
	nc.Close()
}

func TestCredentialsAreKeptPrivateAndReused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "creds")
	first, err := natsserver.LoadOrCreateCredentials(dir, testAgencies)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Accounts.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{first.AgencySeedFile(prison), first.AgencySeedFile(probation), first.AgencySeedFile(socialWork), first.SeedFile(natsserver.SystemAccount)} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("dir %s: %v %v, want 0700", dir, st.Mode().Perm(), err)
	}
	again, err := natsserver.LoadOrCreateCredentials(dir, testAgencies)
	if err != nil {
		t.Fatal(err)
	}
	for a, pub := range first.Accounts.Users {
		if again.Accounts.Users[a] != pub {
			t.Errorf("%s user changed on reload", a)
		}
	}
	if err := os.Chmod(first.AgencySeedFile(prison), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := natsserver.LoadOrCreateCredentials(dir, testAgencies); err == nil {
		t.Error("a world-readable seed was accepted")
	}
	if _, err := natsserver.AgencyConnectOptions(prison, first.AgencySeedFile(prison)); err == nil {
		t.Error("a service accepted a world-readable seed")
	}
	if err := os.Chmod(first.AgencySeedFile(prison), 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := natsserver.AgencyConnectOptions(prison, first.AgencySeedFile(prison)); err != nil {
		t.Errorf("a 0400 seed: %v", err)
	}
}

func msgs(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	s, err := js.Stream(t.Context(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}
