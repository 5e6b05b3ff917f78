// Package helm_test checks the throughcare chart offline: it renders the chart with Helm's
// own Go packages (the install action, client-only dry run), decodes every object strictly
// into its Kubernetes type, and checks what a deployment relies on, for the default values
// and for production-values.yaml. It also runs helm lint, and the rendered serve command
// (serve_test.go).
package helm_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/cli/values"
	"helm.sh/helm/v4/pkg/getter"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/throughcare/throughcare/pkg/agency"
	"github.com/throughcare/throughcare/pkg/certs"
	"github.com/throughcare/throughcare/pkg/image"
	"github.com/throughcare/throughcare/pkg/protocol"
)

const pcveProtocol = "../protocol/with-pcve.textproto"

// chartCase is one way to install the chart, and the protocol its services then run.
type chartCase struct {
	name string
	opts values.Options
	// protocolFile is what --set-file gives protocol.textproto; empty runs the default.
	protocolFile string
}

func (c chartCase) registry(t *testing.T) *agency.Registry {
	t.Helper()
	if c.protocolFile == "" {
		return protocol.Default().Agencies()
	}
	p, err := protocol.Load(c.protocolFile)
	if err != nil {
		t.Fatal(err)
	}
	return p.Agencies()
}

// values are the values the chart renders with: its own, then the case's files and
// --set flags, as Helm merges them.
func (c chartCase) values(t *testing.T) map[string]any {
	t.Helper()
	opts := c.opts
	opts.ValueFiles = append([]string{chartDir + "/values.yaml"}, opts.ValueFiles...)
	v, err := opts.MergeValues(getter.Providers{})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

var (
	defaultCase    = chartCase{name: "default values"}
	productionCase = chartCase{
		name: "production-values.yaml",
		opts: values.Options{
			ValueFiles: []string{"production-values.yaml"},
			FileValues: []string{"protocol.textproto=" + pcveProtocol},
		},
		protocolFile: pcveProtocol,
	}
)

func TestChartRendersEachAgencyOfTheProtocol(t *testing.T) {
	for _, c := range []chartCase{defaultCase, productionCase} {
		t.Run(c.name, func(t *testing.T) {
			m, err := render(t, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			want := c.registry(t).IDs()
			slices.Sort(want)
			var got []string
			for _, d := range m.Deployments {
				got = append(got, d.Labels["app.kubernetes.io/component"])
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("Deployments for %v; want one for each of the protocol's agencies %v", got, want)
			}
			v := c.values(t)
			checkLabels(t, m, want)
			checkProtocol(t, c, m)
			for _, id := range want {
				t.Run(id, func(t *testing.T) { checkAgency(t, v, m, id) })
			}
		})
	}
}

// checkLabels: every object carries the recommended labels, and each agency's objects
// name it as their component.
func checkLabels(t *testing.T, m *manifest, agencies []string) {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"app.kubernetes.io/name":       chrt.Metadata.Name,
		"app.kubernetes.io/instance":   releaseName,
		"app.kubernetes.io/version":    chrt.Metadata.AppVersion,
		"app.kubernetes.io/part-of":    "throughcare",
		"app.kubernetes.io/managed-by": "Helm",
		"helm.sh/chart":                chrt.Metadata.Name + "-" + chrt.Metadata.Version,
	}
	check := func(what string, labels map[string]string) {
		for k, v := range want {
			if labels[k] != v {
				t.Errorf("%s: label %s = %q, want %q", what, k, labels[k], v)
			}
		}
	}
	for key, meta := range m.Metas {
		check(key, meta.Labels)
		if c, ok := meta.Labels["app.kubernetes.io/component"]; ok && !slices.Contains(agencies, c) {
			t.Errorf("%s: component %q is no agency", key, c)
		}
		if id, ok := strings.CutPrefix(meta.Name, releaseName+"-"); ok && !strings.HasPrefix(key, "ConfigMap/") {
			id, _, _ = strings.Cut(id, "-")
			if meta.Labels["app.kubernetes.io/component"] != id {
				t.Errorf("%s: component %q, want the agency %q", key, meta.Labels["app.kubernetes.io/component"], id)
			}
		}
	}
	for name, d := range m.Deployments {
		check("pod template of "+name, d.Spec.Template.Labels)
	}
}

// checkProtocol: the protocol runs from a ConfigMap holding exactly the file given, or,
// with none given, the built-in default runs and no ConfigMap is made.
func checkProtocol(t *testing.T, c chartCase, m *manifest) {
	t.Helper()
	cm := m.ConfigMaps[releaseName+"-protocol"]
	if c.protocolFile == "" {
		if cm != nil {
			t.Errorf("a protocol ConfigMap with no protocol given")
		}
		return
	}
	want, err := os.ReadFile(c.protocolFile)
	if err != nil {
		t.Fatal(err)
	}
	if cm == nil {
		t.Fatalf("no ConfigMap %s-protocol; have %v", releaseName, names(m.ConfigMaps))
	}
	if got := cm.Data["protocol.textproto"]; got != string(want) {
		t.Errorf("ConfigMap %s holds another protocol than %s:\n%s", cm.Name, c.protocolFile, got)
	}
}

func checkAgency(t *testing.T, v map[string]any, m *manifest, id string) {
	name := releaseName + "-" + id
	dep := m.Deployments[name]
	svc, pdb, sa := m.Services[name], m.PDBs[name], m.ServiceAccounts[name]
	if dep == nil || svc == nil || pdb == nil || sa == nil {
		t.Fatalf("want Deployment, Service, PodDisruptionBudget and ServiceAccount %s; have %v, %v, %v, %v",
			name, names(m.Deployments), names(m.Services), names(m.PDBs), names(m.ServiceAccounts))
	}
	a, _ := lookup(v, "agencies", id).(map[string]any)
	pod := dep.Spec.Template
	sel := dep.Spec.Selector.MatchLabels
	if sel["app.kubernetes.io/component"] != id || len(dep.Spec.Selector.MatchExpressions) > 0 {
		t.Errorf("Deployment selector %v: want it to select the agency %s by its component label", dep.Spec.Selector, id)
	}
	if !selects(sel, pod.Labels) {
		t.Errorf("Deployment selector %v does not select its own pods %v", sel, pod.Labels)
	}
	for other, d := range m.Deployments {
		if other != name && selects(sel, d.Spec.Template.Labels) {
			t.Errorf("the selector of %s also selects the pods of %s", name, other)
		}
	}
	if !maps.Equal(svc.Spec.Selector, sel) || !maps.Equal(pdb.Spec.Selector.MatchLabels, sel) {
		t.Errorf("Service selector %v, PDB selector %v; want the Deployment's %v", svc.Spec.Selector, pdb.Spec.Selector, sel)
	}

	if len(pod.Spec.Containers) != 1 || len(pod.Spec.InitContainers) != 0 {
		t.Fatalf("%d containers and %d init containers; want the service alone", len(pod.Spec.Containers), len(pod.Spec.InitContainers))
	}
	c := pod.Spec.Containers[0]
	if !slices.Equal(c.Command, []string{image.BinaryPath}) || len(c.Args) == 0 || c.Args[0] != "serve" {
		t.Fatalf("command %v args %v; want %s serve ...", c.Command, c.Args, image.BinaryPath)
	}
	flags := parseFlags(t, c.Args[1:])
	if flags["service"] != id {
		t.Errorf("--service=%q; want %q", flags["service"], id)
	}
	// Streams and buckets at R3, on the three NATS nodes of deploy/nats/helm-values.yaml.
	if flags["replicas"] != "3" {
		t.Errorf("--replicas=%q; want 3", flags["replicas"])
	}
	checkPorts(t, c, svc, flags)
	checkSecurity(t, pod.Spec, c)
	if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken ||
		sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken || pod.Spec.ServiceAccountName != sa.Name {
		t.Errorf("service account %q, automount %v (account's %v); want its own account %s and no token", pod.Spec.ServiceAccountName,
			pod.Spec.AutomountServiceAccountToken != nil && *pod.Spec.AutomountServiceAccountToken,
			sa.AutomountServiceAccountToken != nil && *sa.AutomountServiceAccountToken, sa.Name)
	}
	checkFiles(t, v, dep, id, flags)
	checkScaling(t, v, m, dep, a)
	checkNetworkPolicy(t, v, m, name, a, flags)
	checkCertificates(t, v, m, dep, id)
	checkServiceMonitor(t, v, m, svc)
}

// checkPorts: every probe is a native gRPC probe of the plaintext health port, which is
// neither the mutual-TLS port nor exposed by the Service.
func checkPorts(t *testing.T, c corev1.Container, svc *corev1.Service, flags map[string]string) {
	t.Helper()
	port := func(flag string) int32 {
		_, p, err := net.SplitHostPort(flags[flag])
		n, perr := strconv.ParseInt(p, 10, 32)
		if err != nil || perr != nil || n == 0 {
			t.Fatalf("--%s=%q: want a port", flag, flags[flag])
		}
		return int32(n)
	}
	grpcPort, healthPort, metricsPort := port("addr"), port("health-addr"), port("metrics-addr")
	if healthPort == grpcPort {
		t.Fatalf("health on the gRPC port %d", grpcPort)
	}
	named := map[string]int32{}
	for _, p := range c.Ports {
		named[p.Name] = p.ContainerPort
	}
	if named["grpc"] != grpcPort || named["health"] != healthPort || named["metrics"] != metricsPort {
		t.Errorf("container ports %v; want grpc %d, health %d, metrics %d as serve listens", named, grpcPort, healthPort, metricsPort)
	}
	for what, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.GRPC == nil || p.HTTPGet != nil || p.TCPSocket != nil || p.Exec != nil {
			t.Errorf("%s probe %+v: want a native gRPC probe", what, p)
			continue
		}
		if p.GRPC.Port != healthPort || (p.GRPC.Service != nil && *p.GRPC.Service != "") {
			t.Errorf("%s probe on port %d service %v; want the plaintext health port %d, the server's overall health", what, p.GRPC.Port, p.GRPC.Service, healthPort)
		}
	}
	svcPorts := map[string]corev1.ServicePort{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Name] = p
		if p.TargetPort.String() == "health" || p.TargetPort.IntValue() == int(healthPort) {
			t.Errorf("Service %s exposes the plaintext health port", svc.Name)
		}
	}
	if g, ok := svcPorts["grpc"]; !ok || (g.TargetPort.String() != "grpc" && g.TargetPort.IntValue() != int(grpcPort)) {
		t.Errorf("Service %s: grpc port %+v; want it to reach the container's gRPC port", svc.Name, g)
	}
}

// checkSecurity: non-root as the image's user, read-only root filesystem, no privilege
// escalation, every capability dropped, seccomp RuntimeDefault.
func checkSecurity(t *testing.T, pod corev1.PodSpec, c corev1.Container) {
	t.Helper()
	psc, sc := pod.SecurityContext, c.SecurityContext
	if psc == nil || sc == nil {
		t.Fatalf("pod securityContext %v, container securityContext %v: want both", psc, sc)
	}
	isTrue := func(b *bool) bool { return b != nil && *b }
	is := func(p *int64, want int64) bool { return p != nil && *p == want }
	show := func(p any) string { // the value behind a pointer, or nil
		if rv := reflect.ValueOf(p); rv.Kind() == reflect.Pointer && !rv.IsNil() {
			return fmt.Sprint(rv.Elem())
		}
		return "nil"
	}
	uid := int64(image.UID)
	if !isTrue(psc.RunAsNonRoot) || !is(psc.RunAsUser, uid) || !is(psc.RunAsGroup, uid) || !is(psc.FSGroup, uid) {
		t.Errorf("pod runAsNonRoot %s, user %s, group %s, fsGroup %s; want non-root, the image's %d throughout", show(psc.RunAsNonRoot),
			show(psc.RunAsUser), show(psc.RunAsGroup), show(psc.FSGroup), uid)
	}
	if psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod seccompProfile %v; want RuntimeDefault", psc.SeccompProfile)
	}
	if sc.RunAsUser != nil && *sc.RunAsUser != uid || sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot {
		t.Errorf("the container overrides the pod's user: %s, non-root %s", show(sc.RunAsUser), show(sc.RunAsNonRoot))
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || isTrue(sc.Privileged) {
		t.Errorf("allowPrivilegeEscalation %s, privileged %s; want neither", show(sc.AllowPrivilegeEscalation), show(sc.Privileged))
	}
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		t.Errorf("readOnlyRootFilesystem %s; want true", show(sc.ReadOnlyRootFilesystem))
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("capabilities %+v; want ALL dropped and none added", sc.Capabilities)
	}
	if sc.SeccompProfile != nil && sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container seccompProfile %v; want RuntimeDefault", sc.SeccompProfile)
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Errorf("pod shares the host's namespaces")
	}
}

// source is where a mounted file comes from.
type source struct {
	Kind, Name, Key string // Secret or ConfigMap, its name, the key
	Mode            int32
	ReadOnly        bool
}

// mounted is the source of the file at path in container c of pod, or an error.
func mounted(pod corev1.PodSpec, c corev1.Container, path string) (source, error) {
	for _, vm := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(path, strings.TrimSuffix(vm.MountPath, "/")+"/")
		if !ok {
			continue
		}
		i := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == vm.Name })
		if i < 0 {
			return source{}, fmt.Errorf("%s: mount %s has no volume", path, vm.Name)
		}
		vol := pod.Volumes[i]
		s := source{ReadOnly: vm.ReadOnly}
		var items []corev1.KeyToPath
		var defaultMode *int32
		switch {
		case vol.Secret != nil:
			s.Kind, s.Name, items, defaultMode = "Secret", vol.Secret.SecretName, vol.Secret.Items, vol.Secret.DefaultMode
		case vol.ConfigMap != nil:
			s.Kind, s.Name, items, defaultMode = "ConfigMap", vol.ConfigMap.Name, vol.ConfigMap.Items, vol.ConfigMap.DefaultMode
		default:
			return source{}, fmt.Errorf("%s: volume %s is neither a Secret nor a ConfigMap", path, vol.Name)
		}
		// Kubernetes' own default, 0644, when neither the item nor the volume sets one.
		s.Mode = 0o644
		if defaultMode != nil {
			s.Mode = *defaultMode
		}
		if len(items) == 0 {
			s.Key = rel
			return s, nil
		}
		for _, it := range items {
			if it.Path == rel {
				s.Key = it.Key
				if it.Mode != nil {
					s.Mode = *it.Mode
				}
				return s, nil
			}
		}
		return source{}, fmt.Errorf("%s: volume %s projects no item at %s", path, vol.Name, rel)
	}
	return source{}, fmt.Errorf("%s: no volume mounted there", path)
}

// fileWant is where a file serve is given must come from.
type fileWant struct {
	source
	secret bool // closed to group and others
}

// expectedFiles are, by serve flag, the Secrets and ConfigMaps the README tells the
// operator to create (or the chart or cert-manager makes) for agency id.
func expectedFiles(v map[string]any, id string) map[string]fileWant {
	str := func(path ...string) string { s, _ := lookup(v, path...).(string); return s }
	or := func(s, def string) string {
		if s != "" {
			return s
		}
		return def
	}
	agencySecret := func(key, suffix string) string {
		return or(str("agencies", id, "secrets", key), releaseName+"-"+id+"-"+suffix)
	}
	tlsSecret := agencySecret("tls", "tls")
	wants := map[string]fileWant{
		"tls-ca":          {source{Kind: "Secret", Name: tlsSecret, Key: "ca.crt"}, false},
		"tls-cert":        {source{Kind: "Secret", Name: tlsSecret, Key: "tls.crt"}, false},
		"tls-key":         {source{Kind: "Secret", Name: tlsSecret, Key: "tls.key"}, true},
		"nats-nkey-seed":  {source{Kind: "Secret", Name: agencySecret("natsNkeySeed", "nats-nkey"), Key: str("nats", "nkeySeedKey")}, true},
		"signing-key":     {source{Kind: "Secret", Name: agencySecret("signingKey", "signing-key"), Key: str("signing", "secretKey")}, true},
		"person-hash-key": {source{Kind: "Secret", Name: or(str("personHashKey", "secretName"), releaseName+"-person-hash-key"), Key: str("personHashKey", "secretKey")}, true},
		"keyring":         {source{Kind: "ConfigMap", Name: or(str("signing", "keyringConfigMap"), releaseName+"-keyring"), Key: "keyring.json"}, false},
	}
	if str("protocol", "textproto") != "" {
		wants["protocol"] = fileWant{source{Kind: "ConfigMap", Name: releaseName + "-protocol", Key: "protocol.textproto"}, false}
	}
	if ca := str("nats", "tls", "caSecret"); ca != "" {
		wants["nats-tls-ca"] = fileWant{source{Kind: "Secret", Name: ca, Key: str("nats", "tls", "caKey")}, false}
	}
	return wants
}

// checkFiles: every file serve is given comes from the expected Secret or ConfigMap,
// read-only, and secrets closed to others: serve refuses key files others may read.
func checkFiles(t *testing.T, v map[string]any, dep *appsv1.Deployment, id string, flags map[string]string) {
	t.Helper()
	wants := expectedFiles(v, id)
	pod := dep.Spec.Template.Spec
	c := pod.Containers[0]
	for _, f := range []string{"protocol", "nats-tls-ca"} {
		if _, ok := wants[f]; !ok && flags[f] != "" {
			t.Errorf("--%s=%s with no %s in the values", f, flags[f], f)
		}
	}
	for flag, w := range wants {
		got, err := mounted(pod, c, flags[flag])
		if err != nil {
			t.Errorf("--%s: %v", flag, err)
			continue
		}
		if got.Kind != w.Kind || got.Name != w.Name || got.Key != w.Key || !got.ReadOnly {
			t.Errorf("--%s=%s from %s %s key %s (read-only %v); want %s %s key %s, read-only", flag, flags[flag],
				got.Kind, got.Name, got.Key, got.ReadOnly, w.Kind, w.Name, w.Key)
		}
		if w.secret && got.Mode&0o077 != 0 {
			t.Errorf("--%s: mode %#o; want 0400 or 0600, closed to group and others", flag, got.Mode)
		}
	}
	for _, vol := range pod.Volumes {
		if !slices.ContainsFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.Name == vol.Name }) {
			t.Errorf("volume %s is mounted nowhere", vol.Name)
		}
	}
}

// checkScaling: with autoscaling, an HPA owns the replica count; without, the Deployment
// sets it and no HPA exists. The PDB leaves a pod up during a drain.
func checkScaling(t *testing.T, v map[string]any, m *manifest, dep *appsv1.Deployment, a map[string]any) {
	t.Helper()
	enabled, _ := lookup(v, "autoscaling", "enabled").(bool)
	if e, ok := lookup(a, "autoscaling", "enabled").(bool); ok {
		enabled = e
	}
	hpa := m.HPAs[dep.Name]
	switch {
	case enabled && hpa == nil:
		t.Errorf("autoscaling is on and there is no HPA %s; have %v", dep.Name, names(m.HPAs))
	case enabled:
		if dep.Spec.Replicas != nil {
			t.Errorf("Deployment sets replicas %d under an HPA", *dep.Spec.Replicas)
		}
		ref := hpa.Spec.ScaleTargetRef
		if ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || ref.Name != dep.Name {
			t.Errorf("HPA scales %+v; want Deployment %s", ref, dep.Name)
		}
		if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 2 || hpa.Spec.MaxReplicas < *hpa.Spec.MinReplicas {
			t.Errorf("HPA min %v max %d; want at least 2, max above min", hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas)
		}
		// A CPU utilization target means nothing without a CPU request.
		if _, ok := dep.Spec.Template.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU]; !ok {
			t.Errorf("HPA on CPU and no CPU request")
		}
	default:
		if hpa != nil {
			t.Errorf("autoscaling is off and there is an HPA %s", hpa.Name)
		}
		if dep.Spec.Replicas == nil || *dep.Spec.Replicas < 1 {
			t.Errorf("Deployment replicas %v; want them set", dep.Spec.Replicas)
		}
	}
	pdb := m.PDBs[dep.Name]
	if pdb.Spec.MinAvailable != nil || pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("PDB minAvailable %v maxUnavailable %v; want one pod at a time", pdb.Spec.MinAvailable, pdb.Spec.MaxUnavailable)
	}
}

// checkNetworkPolicy: gRPC only from the configured agency-system sources (none: closed),
// metrics only from monitoring, nothing else in; out, NATS and DNS only.
func checkNetworkPolicy(t *testing.T, v map[string]any, m *manifest, name string, a map[string]any, flags map[string]string) {
	t.Helper()
	np := m.NetworkPolicies[name]
	if np == nil {
		t.Fatalf("no NetworkPolicy %s; have %v", name, names(m.NetworkPolicies))
	}
	if !maps.Equal(np.Spec.PodSelector.MatchLabels, m.Deployments[name].Spec.Selector.MatchLabels) {
		t.Errorf("NetworkPolicy selects %v; want the Deployment's pods", np.Spec.PodSelector)
	}
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		t.Errorf("policyTypes %v; want Ingress and Egress", np.Spec.PolicyTypes)
	}
	portOf := func(flag string) int {
		_, p, _ := net.SplitHostPort(flags[flag])
		n, _ := strconv.Atoi(p)
		return n
	}
	grpcPort, metricsPort := portOf("addr"), portOf("metrics-addr")
	wantGRPC := append(peers(t, lookup(v, "networkPolicy", "grpcFrom")), peers(t, lookup(a, "grpcFrom"))...)
	wantMetrics := peers(t, lookup(v, "networkPolicy", "metricsFrom"))
	if len(wantMetrics) == 0 {
		t.Fatal("the values name no monitoring peers; the test wants some to check")
	}
	var sawGRPC, sawMetrics bool
	for i, r := range np.Spec.Ingress {
		// An empty from would admit every source.
		if len(r.From) == 0 || len(r.Ports) != 1 || r.Ports[0].Port == nil {
			t.Errorf("ingress[%d] from %v ports %v: want named peers on one port", i, r.From, r.Ports)
			continue
		}
		switch r.Ports[0].Port.IntValue() {
		case grpcPort:
			sawGRPC = true
			if !reflect.DeepEqual(r.From, wantGRPC) {
				t.Errorf("gRPC from %v; want the configured agency systems %v", r.From, wantGRPC)
			}
		case metricsPort:
			sawMetrics = true
			if !reflect.DeepEqual(r.From, wantMetrics) {
				t.Errorf("metrics from %v; want monitoring %v", r.From, wantMetrics)
			}
		default:
			t.Errorf("ingress[%d] opens port %v", i, r.Ports[0].Port)
		}
	}
	if sawGRPC != (len(wantGRPC) > 0) || !sawMetrics {
		t.Errorf("gRPC ingress rule %v, metrics rule %v; want gRPC iff sources are configured (%d), metrics always", sawGRPC, sawMetrics, len(wantGRPC))
	}
	natsPort, err := strconv.Atoi(fmt.Sprint(lookup(v, "networkPolicy", "natsPort")))
	if err != nil {
		t.Fatalf("networkPolicy.natsPort: %v", err)
	}
	wantEgress := map[string][]networkingv1.NetworkPolicyPeer{
		fmt.Sprintf("TCP/%d", natsPort): peers(t, lookup(v, "networkPolicy", "natsTo")),
		"UDP/53":                        peers(t, lookup(v, "networkPolicy", "dnsTo")),
		"TCP/53":                        peers(t, lookup(v, "networkPolicy", "dnsTo")),
	}
	var extra []networkingv1.NetworkPolicyEgressRule
	roundTrip(t, lookup(v, "networkPolicy", "extraEgress"), &extra)
	for i, r := range np.Spec.Egress {
		if len(r.To) == 0 || len(r.Ports) == 0 {
			t.Errorf("egress[%d] to %v ports %v: want named peers and ports", i, r.To, r.Ports)
			continue
		}
		if slices.ContainsFunc(extra, func(e networkingv1.NetworkPolicyEgressRule) bool { return reflect.DeepEqual(e, r) }) {
			continue
		}
		for _, p := range r.Ports {
			if p.Protocol == nil || p.Port == nil {
				t.Errorf("egress[%d] port %+v: want a protocol and a port", i, p)
				continue
			}
			key := fmt.Sprintf("%s/%d", *p.Protocol, p.Port.IntValue())
			want, ok := wantEgress[key]
			if !ok {
				t.Errorf("egress[%d] opens %s", i, key)
			} else if !reflect.DeepEqual(r.To, want) {
				t.Errorf("egress[%d] %s to %v; want %v", i, key, r.To, want)
			}
			delete(wantEgress, key)
		}
	}
	if len(wantEgress) > 0 {
		t.Errorf("no egress to %v", slices.Sorted(maps.Keys(wantEgress)))
	}
}

// checkCertificates: with cert-manager, the server certificate's Secret is the one the
// service mounts, for its Service's names, with server auth; the agency system's client
// certificate carries client auth and the agency's identity URI. Without, none.
func checkCertificates(t *testing.T, v map[string]any, m *manifest, dep *appsv1.Deployment, id string) {
	t.Helper()
	server, client := m.Certificates[dep.Name+"-server"], m.Certificates[dep.Name+"-client"]
	enabled, _ := lookup(v, "tls", "certManager", "enabled").(bool)
	withClient, _ := lookup(v, "tls", "certManager", "clientCertificates").(bool)
	if !enabled {
		if len(m.Certificates) > 0 {
			t.Errorf("cert-manager is off and there are Certificates %v", names(m.Certificates))
		}
		return
	}
	if server == nil || (client == nil) == withClient {
		t.Fatalf("Certificates %v; want %s-server and, iff clientCertificates, %s-client", names(m.Certificates), dep.Name, dep.Name)
	}
	issuer, _ := lookup(v, "tls", "certManager", "issuerRef", "name").(string)
	pod := dep.Spec.Template.Spec
	src, err := mounted(pod, pod.Containers[0], parseFlags(t, pod.Containers[0].Args[1:])["tls-cert"])
	if err != nil {
		t.Fatal(err)
	}
	if server.Spec.SecretName != src.Name || server.Spec.IssuerRef.Name != issuer {
		t.Errorf("server certificate into Secret %s from %s; want the mounted %s, from %s", server.Spec.SecretName, server.Spec.IssuerRef.Name, src.Name, issuer)
	}
	if !slices.Contains(server.Spec.Usages, "server auth") || slices.Contains(server.Spec.Usages, "client auth") {
		t.Errorf("server certificate usages %v; want server auth", server.Spec.Usages)
	}
	for _, n := range []string{dep.Name, dep.Name + "." + namespace + ".svc", dep.Name + "." + namespace + ".svc.cluster.local"} {
		if !slices.Contains(server.Spec.DNSNames, n) {
			t.Errorf("server certificate names %v; want %s among them", server.Spec.DNSNames, n)
		}
	}
	if client == nil {
		return
	}
	if !slices.Contains(client.Spec.Usages, "client auth") || slices.Contains(client.Spec.Usages, "server auth") {
		t.Errorf("client certificate usages %v; want client auth", client.Spec.Usages)
	}
	if !slices.Equal(client.Spec.URIs, []string{certs.AgencyURI(id)}) || len(client.Spec.DNSNames) > 0 {
		t.Errorf("client certificate URIs %v DNS %v; want the identity %s alone", client.Spec.URIs, client.Spec.DNSNames, certs.AgencyURI(id))
	}
	if client.Spec.SecretName == server.Spec.SecretName {
		t.Errorf("client and server certificates share Secret %s", client.Spec.SecretName)
	}
	if client.Spec.IssuerRef != server.Spec.IssuerRef {
		t.Errorf("client certificate from %v, server's from %v: the server accepts clients of its own CA only", client.Spec.IssuerRef, server.Spec.IssuerRef)
	}
}

func checkServiceMonitor(t *testing.T, v map[string]any, m *manifest, svc *corev1.Service) {
	t.Helper()
	sm := m.ServiceMonitors[svc.Name]
	if enabled, _ := lookup(v, "serviceMonitor", "enabled").(bool); !enabled {
		if len(m.ServiceMonitors) > 0 {
			t.Errorf("serviceMonitor is off and there are ServiceMonitors %v", names(m.ServiceMonitors))
		}
		return
	}
	if sm == nil {
		t.Fatalf("no ServiceMonitor %s; have %v", svc.Name, names(m.ServiceMonitors))
	}
	if !selects(sm.Spec.Selector.MatchLabels, svc.Labels) {
		t.Errorf("ServiceMonitor selects %v; Service labels %v", sm.Spec.Selector.MatchLabels, svc.Labels)
	}
	for _, e := range sm.Spec.Endpoints {
		if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == e.Port }) || e.Path != "/metrics" {
			t.Errorf("ServiceMonitor scrapes port %q path %q; the Service has no such port, or it is not /metrics", e.Port, e.Path)
		}
	}
	if len(sm.Spec.Endpoints) == 0 {
		t.Error("ServiceMonitor has no endpoints")
	}
}

// Optional objects follow their switches, both ways, and per agency.
func TestChartTogglesOptionalObjects(t *testing.T) {
	withSet := func(c chartCase, set ...string) values.Options {
		o := c.opts
		o.Values = append(slices.Clone(o.Values), set...)
		return o
	}
	for _, tc := range []struct {
		name  string
		opts  values.Options
		check func(*testing.T, *manifest)
	}{
		{"production without autoscaling", withSet(productionCase, "autoscaling.enabled=false"), func(t *testing.T, m *manifest) {
			if len(m.HPAs) > 0 {
				t.Errorf("HPAs %v with autoscaling off", names(m.HPAs))
			}
			for n, d := range m.Deployments {
				if d.Spec.Replicas == nil {
					t.Errorf("%s: no replicas with autoscaling off", n)
				}
			}
		}},
		{"production: one agency opts out of autoscaling", productionCase.opts, func(t *testing.T, m *manifest) {
			if _, ok := m.HPAs[releaseName+"-pcve"]; ok || len(m.HPAs) != len(m.Deployments)-1 {
				t.Errorf("HPAs %v; want one per agency but pcve, which turns it off", names(m.HPAs))
			}
		}},
		{"default: one agency opts in to autoscaling", withSet(defaultCase, "agencies.probation.autoscaling.enabled=true"), func(t *testing.T, m *manifest) {
			if got := names(m.HPAs); !slices.Equal(got, []string{releaseName + "-probation"}) {
				t.Errorf("HPAs %v; want probation's alone", got)
			}
		}},
		{"cert-manager without client certificates", withSet(defaultCase, "tls.certManager.enabled=true", "tls.certManager.issuerRef.name=ca", "tls.certManager.clientCertificates=false"), func(t *testing.T, m *manifest) {
			for n, c := range m.Certificates {
				if !strings.HasSuffix(n, "-server") || !slices.Contains(c.Spec.Usages, "server auth") {
					t.Errorf("Certificate %s usages %v; want server certificates alone", n, c.Spec.Usages)
				}
			}
			if len(m.Certificates) != len(m.Deployments) {
				t.Errorf("%d Certificates for %d agencies", len(m.Certificates), len(m.Deployments))
			}
		}},
		{"one agency per release", withSet(defaultCase, "agencies.probation=null", "agencies.socialwork=null"), func(t *testing.T, m *manifest) {
			for kind, got := range map[string][]string{"Deployments": names(m.Deployments), "Services": names(m.Services),
				"PDBs": names(m.PDBs), "NetworkPolicies": names(m.NetworkPolicies)} {
				if !slices.Equal(got, []string{releaseName + "-prison"}) {
					t.Errorf("%s %v; want the prison's alone", kind, got)
				}
			}
		}},
		{"no network policy", withSet(defaultCase, "networkPolicy.enabled=false"), func(t *testing.T, m *manifest) {
			if len(m.NetworkPolicies) > 0 {
				t.Errorf("NetworkPolicies %v when disabled", names(m.NetworkPolicies))
			}
		}},
		{"no monitoring peers closes the metrics port", withSet(defaultCase, "networkPolicy.metricsFrom=null"), func(t *testing.T, m *manifest) {
			for n, np := range m.NetworkPolicies {
				if len(np.Spec.Ingress) > 0 {
					t.Errorf("%s: ingress %v with no sources configured", n, np.Spec.Ingress)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := render(t, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, m)
		})
	}
}

// Values that would deploy something unsafe or broken are refused at render time.
func TestChartRefusesBadValues(t *testing.T) {
	for _, tc := range []struct {
		set  []string
		want string
	}{
		{[]string{"agencies.Police.replicas=1"}, "Police"},
		{[]string{"networkPolicy.natsTo=null"}, "natsTo"},
		{[]string{"networkPolicy.dnsTo=null"}, "dnsTo"},
		{[]string{"tls.certManager.enabled=true"}, "issuerRef.name"},
		{[]string{"fullnameOverride=" + strings.Repeat("x", 60)}, "longer than 63"},
		{[]string{"nats.jetstreamReplicas=7"}, "jetstreamReplicas"},
		{[]string{"agencies.prison.secrets.natsSeed=x"}, "natsSeed"},
	} {
		_, err := renderRelease(values.Options{Values: tc.set})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--set %v: %v; want an error naming %s", tc.set, err, tc.want)
		}
	}
}

// helm lint, in process and strict, passes for both values sets.
func TestChartLints(t *testing.T) {
	kv, err := common.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []chartCase{defaultCase, productionCase} {
		vals, err := c.opts.MergeValues(getter.Providers{})
		if err != nil {
			t.Fatal(err)
		}
		lint := action.NewLint()
		lint.Strict, lint.Namespace, lint.KubeVersion = true, namespace, kv
		res := lint.Run([]string{chartDir}, vals)
		if res.TotalChartsLinted != 1 || len(res.Errors) > 0 {
			t.Errorf("%s: helm lint linted %d charts: %v", c.name, res.TotalChartsLinted, res.Errors)
		}
		for _, msg := range res.Messages {
			t.Logf("%s: %v", c.name, msg)
		}
	}
}

// parseFlags reads --name=value arguments, each given once.
func parseFlags(t *testing.T, args []string) map[string]string {
	t.Helper()
	flags := map[string]string{}
	for _, a := range args {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok {
			t.Fatalf("argument %q: want --name=value", a)
		}
		if _, dup := flags[name]; dup {
			t.Fatalf("--%s given twice", name)
		}
		flags[name] = value
	}
	return flags
}

// selects reports whether every label of sel is in labels.
func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
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

// roundTrip decodes a values subtree into a Kubernetes type, strictly.
func roundTrip(t *testing.T, v any, into any) {
	t.Helper()
	if v == nil {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		t.Fatalf("values %s: %v", b, err)
	}
}

func peers(t *testing.T, v any) []networkingv1.NetworkPolicyPeer {
	t.Helper()
	var p []networkingv1.NetworkPolicyPeer
	roundTrip(t, v, &p)
	return p
}
