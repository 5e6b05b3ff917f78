package helm_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/throughcare/throughcare/pkg/certs"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/natsserver"
	"github.com/throughcare/throughcare/pkg/signing"
)

var serveBinary struct {
	once sync.Once
	path string
	err  error
}

// throughcareBinary builds cmd/throughcare once per test run, as the test itself is built
// (with -race or not), so that it mostly reuses packages already compiled.
func throughcareBinary(t *testing.T) string {
	t.Helper()
	serveBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "throughcare-helm-test")
		if err != nil {
			serveBinary.err = err
			return
		}
		serveBinary.path = filepath.Join(dir, "throughcare")
		args := []string{"build", "-o", serveBinary.path}
		if raceBuild {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "github.com/throughcare/throughcare/cmd/throughcare")...)
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			serveBinary.err = errors.New("go build ./cmd/throughcare: " + err.Error() + "\n" + string(out))
		}
	})
	if serveBinary.err != nil {
		t.Fatal(serveBinary.err)
	}
	return serveBinary.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if serveBinary.path != "" {
		os.RemoveAll(filepath.Dir(serveBinary.path))
	}
	os.Exit(code)
}

// TestRenderedServeAcceptsItsCommandAndFiles runs each rendered Deployment's container
// command with the real binary: every flag is one serve accepts, and every file it names,
// laid out as the pod's volumes lay it out (keys, paths and modes, with the group read
// the kubelet adds for fsGroup) from the Secrets and ConfigMaps the README says to
// create, is read and accepted. It runs up to connecting to NATS, which the test points
// at a closed port: failing there, and only there, is the pass.
func TestRenderedServeAcceptsItsCommandAndFiles(t *testing.T) {
	bin := throughcareBinary(t)
	for _, c := range []chartCase{defaultCase, productionCase} {
		t.Run(c.name, func(t *testing.T) {
			m, err := render(t, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			v := c.values(t)
			store := clusterObjects(t, c, m, v)
			for _, id := range c.registry(t).IDs() {
				t.Run(id, func(t *testing.T) {
					dep := m.Deployments[releaseName+"-"+id]
					if dep == nil {
						t.Fatalf("no Deployment for %s", id)
					}
					runContainer(t, bin, dep.Spec.Template.Spec, store)
				})
			}
		})
	}
}

// clusterObjects are the Secrets' and ConfigMaps' contents, by kind/name/key, as an
// operator following the README (or cert-manager, or the chart) would have made them:
// real certificates, keys, seeds and the protocol.
func clusterObjects(t *testing.T, c chartCase, m *manifest, v map[string]any) map[string][]byte {
	t.Helper()
	dir := t.TempDir()
	reg := c.registry(t)
	ids := reg.IDs()
	now := time.Now()
	bundle, err := certs.Ensure(filepath.Join(dir, "certs"), ids, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := signing.Ensure(filepath.Join(dir, "keys"), ids, now); err != nil {
		t.Fatal(err)
	}
	personKey := filepath.Join(dir, "person-hash.key")
	if _, err := ledger.EnsurePersonKey(personKey); err != nil {
		t.Fatal(err)
	}
	creds, err := natsserver.LoadOrCreateCredentials(filepath.Join(dir, "credentials"), reg)
	if err != nil {
		t.Fatal(err)
	}
	read := func(path string) []byte {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	store := map[string][]byte{}
	put := func(s source, data []byte) { store[s.Kind+"/"+s.Name+"/"+s.Key] = data }
	for _, id := range ids {
		cert, key := bundle.ServerFiles(id)
		content := map[string][]byte{
			"tls-ca":          read(bundle.CAFile()),
			"tls-cert":        read(cert),
			"tls-key":         read(key),
			"nats-nkey-seed":  read(creds.AgencySeedFile(id)),
			"signing-key":     read(filepath.Join(dir, "keys", id+".key")),
			"person-hash-key": read(personKey),
			"keyring":         read(filepath.Join(dir, "keys", "keyring.json")),
			"nats-tls-ca":     read(bundle.CAFile()),
		}
		for flag, w := range expectedFiles(v, id) {
			if data, ok := content[flag]; ok {
				put(w.source, data)
			}
		}
	}
	// What the chart renders itself wins: the protocol (and a keyring given as a value).
	for name, cm := range m.ConfigMaps {
		for k, data := range cm.Data {
			put(source{Kind: "ConfigMap", Name: name, Key: k}, []byte(data))
		}
	}
	return store
}

// runContainer lays the pod's volumes out under a temporary root, runs the container's
// command with its arguments moved under that root, and wants it to get as far as NATS.
func runContainer(t *testing.T, bin string, pod corev1.PodSpec, store map[string][]byte) {
	t.Helper()
	c := pod.Containers[0]
	root := t.TempDir()
	groupRead := pod.SecurityContext != nil && pod.SecurityContext.FSGroup != nil
	for _, vm := range c.VolumeMounts {
		for _, it := range volumeItems(t, pod, vm.Name) {
			data, ok := store[it.Kind+"/"+it.Name+"/"+it.Key]
			if !ok {
				t.Fatalf("volume %s mounts %s %s key %s, which the README does not have the operator create", vm.Name, it.Kind, it.Name, it.Key)
			}
			mode := os.FileMode(it.Mode)
			if groupRead && mode&0o400 != 0 {
				mode |= 0o040 // the kubelet gives fsGroup read access to a volume's files
			}
			path := filepath.Join(root, vm.MountPath, it.path)
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	closed := closedAddr(t)
	var args []string
	for _, a := range c.Args {
		if name, value, ok := strings.Cut(a, "="); ok {
			switch {
			case name == "--nats-url":
				a = name + "=nats://" + closed
			case strings.HasPrefix(value, "/"):
				a = name + "=" + filepath.Join(root, value)
			}
		}
		args = append(args, a)
	}
	// The container's own environment, but for the OTLP exporter, which would reach out.
	env := []string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil && !strings.HasPrefix(e.Name, "OTEL_") {
			env = append(env, e.Name+"="+e.Value)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	err := cmd.Run()
	const want = "connect to nats: nats: no servers available for connection"
	if err == nil || !strings.Contains(stderr.String(), want) {
		t.Errorf("%s %s: %v; want it to fail with %q alone:\n%s", c.Command[0], strings.Join(c.Args, " "), err, want, stderr.String())
	}
}

// item is one file a volume projects.
type item struct {
	source
	path string
}

func volumeItems(t *testing.T, pod corev1.PodSpec, name string) []item {
	t.Helper()
	for _, vol := range pod.Volumes {
		if vol.Name != name {
			continue
		}
		var s source
		var items []corev1.KeyToPath
		var mode *int32
		switch {
		case vol.Secret != nil:
			s.Kind, s.Name, items, mode = "Secret", vol.Secret.SecretName, vol.Secret.Items, vol.Secret.DefaultMode
		case vol.ConfigMap != nil:
			s.Kind, s.Name, items, mode = "ConfigMap", vol.ConfigMap.Name, vol.ConfigMap.Items, vol.ConfigMap.DefaultMode
		default:
			t.Fatalf("volume %s is neither a Secret nor a ConfigMap", name)
		}
		if len(items) == 0 {
			t.Fatalf("volume %s projects every key; the chart names each file", name)
		}
		var out []item
		for _, it := range items {
			f := item{source: s, path: it.Path}
			f.Key, f.Mode = it.Key, 0o644
			if mode != nil {
				f.Mode = *mode
			}
			if it.Mode != nil {
				f.Mode = *it.Mode
			}
			out = append(out, f)
		}
		return out
	}
	t.Fatalf("no volume %s", name)
	return nil
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}
