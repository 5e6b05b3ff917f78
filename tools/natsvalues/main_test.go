package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/conf"
	"github.com/nats-io/nats-server/v2/server"
	"sigs.k8s.io/yaml"

	"github.com/throughcare/throughcare/pkg/agency"
	"github.com/throughcare/throughcare/pkg/certs"
	"github.com/throughcare/throughcare/pkg/natsserver"
	"github.com/throughcare/throughcare/pkg/protocol"
)

const (
	committed    = "../../deploy/nats/helm-values.yaml"
	certificates = "../../deploy/nats/certificates.yaml"
	pcveProtocol = "../../deploy/protocol/with-pcve.textproto"
	chartValues  = "../../deploy/helm/throughcare/values.yaml"
)

// The committed values are exactly what the generator writes for the default protocol.
func TestCommittedValuesAreGenerated(t *testing.T) {
	version, err := natsServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	want, err := Values(protocol.Default().Agencies(), "", version)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(committed)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from what the generator writes: run go run ./tools/natsvalues", committed)
	}
}

func registries(t *testing.T) map[string]*agency.Registry {
	t.Helper()
	p, err := protocol.Load(pcveProtocol)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]*agency.Registry{"default": protocol.Default().Agencies(), "with-pcve": p.Agencies()}
}

// The values give the server a configuration its own parser accepts, with JetStream on
// files synced on every write, a three-route cluster over mutual TLS, TLS for clients, and
// the very accounts natsserver.ConfTemplate renders (those `throughcare dev` runs).
func TestValuesMakeAServerConfigurationThatParses(t *testing.T) {
	version, err := natsServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	for name, reg := range registries(t) {
		t.Run(name, func(t *testing.T) {
			b, err := Values(reg, name, version)
			if err != nil {
				t.Fatal(err)
			}
			var v map[string]any
			if err := yaml.UnmarshalStrict(b, &v); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			relocateTLS(t, v, dir)
			setNKeys(t, reg)
			t.Setenv("SERVER_NAME", "nats-0")
			cfg, err := chartConfig(v)
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(dir, "nats.conf")
			if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			opts, err := server.ProcessConfigFile(file)
			if err != nil {
				t.Fatalf("nats-server refuses the configuration: %v\n%s", err, cfg)
			}
			if !opts.JetStream || !opts.SyncAlways || opts.StoreDir != "/data" || opts.JetStreamMaxStore != 10<<30 {
				t.Errorf("jetstream %v, sync always %v, store %q, max store %d; want JetStream on files in /data synced on every write, 10 GiB",
					opts.JetStream, opts.SyncAlways, opts.StoreDir, opts.JetStreamMaxStore)
			}
			if opts.Cluster.Name != "nats" || opts.Cluster.Port != 6222 || opts.Cluster.TLSConfig == nil || len(opts.Routes) != 3 {
				t.Errorf("cluster %q port %d TLS %v routes %v; want a three-node cluster over TLS", opts.Cluster.Name, opts.Cluster.Port,
					opts.Cluster.TLSConfig != nil, opts.Routes)
			}
			for _, r := range opts.Routes {
				if r.Scheme != "tls" {
					t.Errorf("route %s: want tls", r)
				}
			}
			if opts.TLSConfig == nil || opts.Port != 4222 {
				t.Errorf("client port %d TLS %v; want TLS on 4222", opts.Port, opts.TLSConfig != nil)
			}
			checkAccounts(t, reg, opts, cfg)
		})
	}
}

// checkAccounts: one nkey user per agency, in the agency's account, plus the system's and
// the operators'; and the accounts block is ConfTemplate's.
func checkAccounts(t *testing.T, reg *agency.Registry, opts *server.Options, cfg string) {
	t.Helper()
	if opts.SystemAccount != natsserver.SystemAccount {
		t.Errorf("system account %q", opts.SystemAccount)
	}
	users := map[string]string{}
	for _, u := range opts.Nkeys {
		users[u.Nkey] = u.Account.Name
	}
	for _, a := range Accounts(reg) {
		if got := users[os.Getenv(natsserver.NKeyEnv(a))]; got != a {
			t.Errorf("the user of %s's key is in account %q", a, got)
		}
	}
	if len(users) != len(Accounts(reg)) {
		t.Errorf("%d nkey users; want %d", len(users), len(Accounts(reg)))
	}
	got, err := conf.Parse(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want, err := conf.Parse(natsserver.ConfTemplate(reg))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got["accounts"], want["accounts"]) || got["system_account"] != want["system_account"] {
		t.Errorf("the accounts differ from natsserver.ConfTemplate's:\n%v\nwant\n%v", got["accounts"], want["accounts"])
	}
}

// The NATS pods read each user's public key from the users' ConfigMap, and run the
// nats-server of go.mod, three of them on three nodes.
func TestValuesRunTheServerWithTheUsersKeys(t *testing.T) {
	version, err := natsServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	for name, reg := range registries(t) {
		b, err := Values(reg, name, version)
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := yaml.UnmarshalStrict(b, &v); err != nil {
			t.Fatal(err)
		}
		env, _ := lookup(v, "container", "env").(map[string]any)
		var wantEnv []string
		for _, a := range Accounts(reg) {
			wantEnv = append(wantEnv, natsserver.NKeyEnv(a))
		}
		if got := slices.Sorted(maps.Keys(env)); !slices.Equal(got, slices.Sorted(slices.Values(wantEnv))) {
			t.Errorf("%s: environment %v; want %v", name, got, wantEnv)
		}
		for k := range env {
			ref := lookup(env, k, "valueFrom", "configMapKeyRef")
			if lookup(ref, "name") != UsersConfigMap || lookup(ref, "key") != k {
				t.Errorf("%s: %s from %v; want ConfigMap %s key %s", name, k, ref, UsersConfigMap, k)
			}
		}
		if tag := lookup(v, "container", "image", "tag"); tag != version+"-alpine" {
			t.Errorf("%s: image tag %v; want go.mod's nats-server %s", name, tag, version)
		}
		spread, _ := lookup(v, "podTemplate", "topologySpreadConstraints", "kubernetes.io/hostname").(map[string]any)
		if lookup(v, "config", "cluster", "replicas") != 3.0 || spread["whenUnsatisfiable"] != "DoNotSchedule" ||
			spread["maxSkew"] != 1.0 || spread["minDomains"] != 3.0 {
			t.Errorf("%s: replicas %v spread %v; want 3 nodes, never two on one Kubernetes node", name, lookup(v, "config", "cluster", "replicas"), spread)
		}
	}
}

// certificate is a cert-manager Certificate, as much as certificates.yaml writes.
type certificate struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		SecretName string `json:"secretName"`
		IssuerRef  struct {
			Name, Kind, Group string
		} `json:"issuerRef"`
		Duration    string `json:"duration"`
		RenewBefore string `json:"renewBefore"`
		PrivateKey  struct {
			Algorithm      string `json:"algorithm"`
			Size           int    `json:"size"`
			RotationPolicy string `json:"rotationPolicy"`
		} `json:"privateKey"`
		Usages   []string `json:"usages"`
		DNSNames []string `json:"dnsNames"`
	} `json:"spec"`
}

// The certificates name every host the configuration and the services dial: the client
// Service the chart's default nats.url names, and each route; the routes' certificate
// serves both ends of a route.
func TestCertificatesNameWhatIsDialled(t *testing.T) {
	b, err := os.ReadFile(certificates)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]certificate{}
	for doc := range strings.SplitSeq(string(b), "\n---\n") {
		js, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		var c certificate
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			t.Fatalf("%s: %v", certificates, err)
		}
		if c.APIVersion != "cert-manager.io/v1" || c.Kind != "Certificate" {
			t.Fatalf("%s: a %s %s", certificates, c.APIVersion, c.Kind)
		}
		byName[c.Spec.SecretName] = c
	}
	var v map[string]any
	committedValues, err := os.ReadFile(committed)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(committedValues, &v); err != nil {
		t.Fatal(err)
	}
	client, route := byName[lookup(v, "config", "nats", "tls", "secretName").(string)], byName[lookup(v, "config", "cluster", "tls", "secretName").(string)]
	if lookup(v, "tlsCA", "secretName") != client.Spec.SecretName || client.Spec.IssuerRef != route.Spec.IssuerRef {
		t.Errorf("the trusted CA is %v's; the certificates come from %v and %v: routes verify each other against one CA",
			lookup(v, "tlsCA", "secretName"), client.Spec.IssuerRef, route.Spec.IssuerRef)
	}
	if !slices.Contains(client.Spec.Usages, "server auth") {
		t.Errorf("client-port certificate usages %v; want server auth", client.Spec.Usages)
	}
	if !slices.Contains(route.Spec.Usages, "server auth") || !slices.Contains(route.Spec.Usages, "client auth") {
		t.Errorf("route certificate usages %v; want server and client auth", route.Spec.Usages)
	}
	var chart map[string]any
	cb, err := os.ReadFile(chartValues)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(cb, &chart); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(lookup(chart, "nats", "url").(string))
	if err != nil {
		t.Fatal(err)
	}
	if !covers(client.Spec.DNSNames, u.Hostname()) {
		t.Errorf("the services dial %s; the client-port certificate names %v", u.Hostname(), client.Spec.DNSNames)
	}
	cfg, err := chartConfig(v)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range regexp.MustCompile(`tls://([^:"]+):`).FindAllStringSubmatch(cfg, -1) {
		if !covers(route.Spec.DNSNames, r[1]) {
			t.Errorf("a route dials %s; the route certificate names %v", r[1], route.Spec.DNSNames)
		}
	}
}

// covers reports whether one of names (a leading * standing for one label) matches host.
func covers(names []string, host string) bool {
	for _, n := range names {
		if rest, ok := strings.CutPrefix(n, "*."); ok {
			if _, after, ok := strings.Cut(host, "."); ok && after == rest {
				return true
			}
		} else if n == host {
			return true
		}
	}
	return false
}

// chartConfig is the nats.conf the NATS chart (nats-io/k8s helm/charts/nats 2.14.2)
// renders from values, for the parts these values use: files/config/config.yaml,
// cluster.yaml, jetstream.yaml and tls.yaml with the chart's defaults, each block's merge
// and config.merge applied over them (mergeOverwrite), then written as JSON with
// "<< x >>" strings unquoted (nats.formatConfig). It refuses values it does not render.
func chartConfig(v map[string]any) (string, error) {
	c, _ := lookup(v, "config").(map[string]any)
	for k := range c {
		if !slices.Contains([]string{"cluster", "jetstream", "nats", "monitor", "merge"}, k) {
			return "", fmt.Errorf("config.%s: the test does not render it", k)
		}
	}
	str := func(def string, path ...string) string {
		if s, ok := lookup(c, path...).(string); ok && s != "" {
			return s
		}
		return def
	}
	on := func(path ...string) bool { return isOn(c, path...) }
	tlsBlock := func(block, defaultDir string) map[string]any {
		dir := strings.TrimSuffix(str(defaultDir, block, "tls", "dir"), "/")
		t := map[string]any{}
		if str("", block, "tls", "secretName") != "" {
			t["cert_file"] = dir + "/" + str("tls.crt", block, "tls", "cert")
			t["key_file"] = dir + "/" + str("tls.key", block, "tls", "key")
		}
		if isOn(v, "tlsCA", "enabled") && (lookup(v, "tlsCA", "secretName") != nil || lookup(v, "tlsCA", "configMapName") != nil) {
			caDir, _ := lookup(v, "tlsCA", "dir").(string)
			if caDir == "" {
				caDir = "/etc/nats-ca-cert"
			}
			key, _ := lookup(v, "tlsCA", "key").(string)
			if key == "" {
				key = "ca.crt"
			}
			t["ca_file"] = strings.TrimSuffix(caDir, "/") + "/" + key
		}
		return mergeOverwrite(t, lookup(c, block, "tls", "merge"))
	}
	name, _ := v["fullnameOverride"].(string)
	if name == "" {
		return "", fmt.Errorf("fullnameOverride: the test renders fixed names only")
	}
	doc := map[string]any{
		"server_name":            "<< $SERVER_NAME >>",
		"lame_duck_grace_period": "10s",
		"lame_duck_duration":     "30s",
		"pid_file":               "/var/run/nats/nats.pid",
		"port":                   4222,
	}
	if on("nats", "tls", "enabled") {
		doc["tls"] = tlsBlock("nats", "/etc/nats-certs/nats")
	}
	if on("cluster", "enabled") {
		scheme := "nats"
		if on("cluster", "tls", "enabled") {
			scheme = "tls"
		}
		replicas, _ := lookup(c, "cluster", "replicas").(float64)
		var routes []any
		for i := range int(replicas) {
			routes = append(routes, fmt.Sprintf("%s://%s-%d.%s-headless:6222", scheme, name, i, name))
		}
		cl := map[string]any{"name": name, "port": 6222, "no_advertise": true, "routes": routes}
		if on("cluster", "tls", "enabled") {
			cl["tls"] = tlsBlock("cluster", "/etc/nats-certs/cluster")
		}
		doc["cluster"] = mergeOverwrite(cl, lookup(c, "cluster", "merge"))
	}
	if on("monitor", "enabled") {
		doc["http_port"] = 8222
	}
	if on("jetstream", "enabled") {
		js := map[string]any{"max_memory_store": 0}
		if on("jetstream", "memoryStore", "enabled") {
			return "", fmt.Errorf("config.jetstream.memoryStore: the test does not render it")
		}
		if on("jetstream", "fileStore", "enabled") {
			js["store_dir"] = str("/data", "jetstream", "fileStore", "dir")
			if on("jetstream", "fileStore", "pvc", "enabled") {
				js["max_file_store"] = "<< " + str("10Gi", "jetstream", "fileStore", "pvc", "size") + " >>"
			}
		}
		doc["jetstream"] = mergeOverwrite(js, lookup(c, "jetstream", "merge"))
	}
	doc = mergeOverwrite(doc, c["merge"])
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // the chart's toPrettyRawJson
	enc.SetIndent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return "", err
	}
	return regexp.MustCompile(`"<<\s+(.*?)\s+>>"`).ReplaceAllString(b.String(), "${1}"), nil
}

// isOn reports whether the value at path is true.
func isOn(v any, path ...string) bool { b, _ := lookup(v, path...).(bool); return b }

// mergeOverwrite is sprig's: maps merge deeply, src's other values win.
func mergeOverwrite(dst map[string]any, src any) map[string]any {
	s, _ := src.(map[string]any)
	for k, sv := range s {
		if dm, ok := dst[k].(map[string]any); ok {
			if sm, ok := sv.(map[string]any); ok {
				dst[k] = mergeOverwrite(dm, sm)
				continue
			}
		}
		dst[k] = sv
	}
	return dst
}

// relocateTLS moves the values' certificate directories under dir and puts a certificate,
// its key and the CA there, so that the parser, which loads them, finds them.
func relocateTLS(t *testing.T, v map[string]any, dir string) {
	t.Helper()
	b, err := certs.Ensure(filepath.Join(dir, "pki"), []string{"nats"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, key := b.ServerFiles("nats")
	copyFile := func(from, to string) {
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(path.Dir(to), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, block := range []string{"nats", "cluster"} {
		tl, ok := lookup(v, "config", block, "tls").(map[string]any)
		if !ok {
			t.Fatalf("config.%s.tls: none", block)
		}
		d := filepath.Join(dir, block)
		tl["dir"] = d
		copyFile(cert, filepath.Join(d, "tls.crt"))
		copyFile(key, filepath.Join(d, "tls.key"))
	}
	ca, ok := v["tlsCA"].(map[string]any)
	if !ok {
		t.Fatal("tlsCA: none")
	}
	ca["dir"] = filepath.Join(dir, "ca")
	copyFile(b.CAFile(), filepath.Join(dir, "ca", "ca.crt"))
}

// setNKeys puts a public user key for each account in the environment, as the ConfigMap
// does in the pod.
func setNKeys(t *testing.T, reg *agency.Registry) {
	t.Helper()
	creds, err := natsserver.LoadOrCreateCredentials(t.TempDir(), reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range reg.IDs() {
		t.Setenv(natsserver.NKeyEnv(natsserver.AccountName(id)), creds.Accounts.Users[id])
	}
	t.Setenv(natsserver.NKeyEnv(natsserver.SystemAccount), creds.Accounts.SystemUser)
	t.Setenv(natsserver.NKeyEnv(natsserver.OperatorAccount), creds.Accounts.OperatorUser)
}

// lookup is v[path[0]][path[1]]..., or nil.
func lookup(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}
