// Package natsserver runs an embedded NATS server with JetStream, for the
// one-binary mode and for tests.
package natsserver

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
)

const readyTimeout = 10 * time.Second

// Config describes the embedded server.
type Config struct {
	Host string
	// Port is the client port; -1 picks a random free port.
	Port int
	// StoreDir is where JetStream keeps its files.
	StoreDir string
	// SyncAlways makes JetStream fsync after every write, trading speed for
	// durability across power loss.
	SyncAlways bool
	ServerName string
	// MaxPayload is the largest message in bytes; 0 keeps the server default.
	MaxPayload int32
	// Accounts, when set, runs one account per agency with nkey users (see Accounts);
	// nil runs the single default account without authentication.
	Accounts *Accounts
	// FeatureFlags opt the server in to (or out of) features, e.g. "js_ack_fc_v2".
	FeatureFlags map[string]bool
}

// Start starts a JetStream-enabled server and waits until it accepts clients.
// The caller owns the server and must call Shutdown (and WaitForShutdown when
// the store must be released, e.g. before restarting on the same StoreDir).
func Start(cfg Config, log *zap.Logger) (*server.Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("start nats server: empty store dir")
	}
	opts := &server.Options{}
	if cfg.Accounts != nil {
		// The accounts go through the configuration parser, exactly as a production
		// server reads deploy/nats/nats-server.conf.
		conf, err := cfg.Accounts.Conf()
		if err != nil {
			return nil, err
		}
		if err := opts.ProcessConfigString(conf); err != nil {
			return nil, fmt.Errorf("nats accounts configuration: %w", err)
		}
	}
	opts.ServerName = cfg.ServerName
	opts.Host = cfg.Host
	opts.Port = cfg.Port
	opts.MaxPayload = cfg.MaxPayload
	opts.JetStream = true
	opts.StoreDir = cfg.StoreDir
	opts.SyncAlways = cfg.SyncAlways
	// The embedding process owns signal handling.
	opts.NoSigs = true
	for k, v := range cfg.FeatureFlags {
		if opts.FeatureFlags == nil {
			opts.FeatureFlags = map[string]bool{}
		}
		opts.FeatureFlags[k] = v
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("create nats server: %w", err)
	}
	srv.SetLoggerV2(zapLogger{log: log.Named("nats").Sugar()}, false, false, false)
	srv.Start()
	// A JetStream failure aborts Start before the client listener opens, so
	// it shows up here as "not ready".
	if !srv.ReadyForConnections(readyTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("start nats server on %s:%d: not ready after %s", cfg.Host, cfg.Port, readyTimeout)
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, errors.New("start nats server: jetstream not enabled")
	}
	return srv, nil
}

// zapLogger routes server logs to zap. Notices go to debug because the server
// is chatty at startup and shutdown; warnings and errors keep their level.
type zapLogger struct {
	log *zap.SugaredLogger
}

func (l zapLogger) Noticef(format string, v ...any) { l.log.Debugf(format, v...) }
func (l zapLogger) Warnf(format string, v ...any)   { l.log.Warnf(format, v...) }
func (l zapLogger) Errorf(format string, v ...any)  { l.log.Errorf(format, v...) }
func (l zapLogger) Debugf(format string, v ...any)  { l.log.Debugf(format, v...) }
func (l zapLogger) Tracef(format string, v ...any)  { l.log.Debugf(format, v...) }

// Fatalf must not exit the process: the server reports startup failures here
// and Start turns them into an error.
func (l zapLogger) Fatalf(format string, v ...any) { l.log.Errorf(format, v...) }
