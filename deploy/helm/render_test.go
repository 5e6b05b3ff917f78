package helm_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/cli/values"
	"helm.sh/helm/v4/pkg/getter"
	release "helm.sh/helm/v4/pkg/release/v1"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "throughcare"
	releaseName = "throughcare"
	namespace   = "throughcare"
	// A Kubernetes version the chart supports: Helm's client-only default in tests is
	// 1.20, below the chart's kubeVersion.
	kubeVersion = "v1.33.0"
)

// certificate is cert-manager.io/v1 Certificate, as much of it as the chart writes: a CRD,
// decoded strictly into this struct, so a field the chart misspells fails the test.
type certificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SecretName string `json:"secretName"`
		IssuerRef  struct {
			Name  string `json:"name"`
			Kind  string `json:"kind"`
			Group string `json:"group"`
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
		URIs     []string `json:"uris"`
	} `json:"spec"`
}

// serviceMonitor is monitoring.coreos.com/v1 ServiceMonitor, as the chart writes it.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Scheme   string `json:"scheme"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// manifest is every object one render made, each decoded into its type.
type manifest struct {
	Deployments     map[string]*appsv1.Deployment
	Services        map[string]*corev1.Service
	ServiceAccounts map[string]*corev1.ServiceAccount
	ConfigMaps      map[string]*corev1.ConfigMap
	PDBs            map[string]*policyv1.PodDisruptionBudget
	NetworkPolicies map[string]*networkingv1.NetworkPolicy
	HPAs            map[string]*autoscalingv2.HorizontalPodAutoscaler
	Certificates    map[string]*certificate
	ServiceMonitors map[string]*serviceMonitor
	// Metas are every object's kind/name and metadata, for checks on all of them.
	Metas map[string]metav1.ObjectMeta
}

// render installs the chart with Helm's own install action, client-only dry run (helm
// template), and decodes every object strictly.
func render(t *testing.T, opts values.Options) (*manifest, error) {
	t.Helper()
	rel, err := renderRelease(opts)
	if err != nil {
		return nil, err
	}
	m := &manifest{
		Deployments: map[string]*appsv1.Deployment{}, Services: map[string]*corev1.Service{},
		ServiceAccounts: map[string]*corev1.ServiceAccount{}, ConfigMaps: map[string]*corev1.ConfigMap{},
		PDBs: map[string]*policyv1.PodDisruptionBudget{}, NetworkPolicies: map[string]*networkingv1.NetworkPolicy{},
		HPAs: map[string]*autoscalingv2.HorizontalPodAutoscaler{}, Certificates: map[string]*certificate{},
		ServiceMonitors: map[string]*serviceMonitor{}, Metas: map[string]metav1.ObjectMeta{},
	}
	if len(rel.Hooks) > 0 {
		t.Errorf("the chart renders %d hooks; it has none", len(rel.Hooks))
	}
	for _, doc := range releaseutil.SplitManifests(rel.Manifest) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		if err := m.add(doc); err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
	}
	return m, nil
}

func renderRelease(opts values.Options) (*release.Release, error) {
	chrt, err := loader.Load(chartDir)
	if err != nil {
		return nil, err
	}
	vals, err := opts.MergeValues(getter.Providers{})
	if err != nil {
		return nil, err
	}
	kv, err := common.ParseKubeVersion(kubeVersion)
	if err != nil {
		return nil, err
	}
	install := action.NewInstall(action.NewConfiguration(action.ConfigurationSetLogger(slog.DiscardHandler)))
	install.DryRunStrategy = action.DryRunClient
	install.ReleaseName, install.Namespace = releaseName, namespace
	install.KubeVersion = kv
	r, err := install.Run(chrt, vals)
	if err != nil {
		return nil, err
	}
	rel, ok := r.(*release.Release)
	if !ok {
		return nil, fmt.Errorf("install returned a %T", r)
	}
	return rel, nil
}

// add decodes one object strictly: YAML to JSON refusing duplicate keys, then JSON into
// its Kubernetes type refusing unknown fields. A kind the test does not know fails.
func (m *manifest) add(doc string) error {
	js, err := yaml.YAMLToJSONStrict([]byte(doc))
	if err != nil {
		return fmt.Errorf("not YAML: %w", err)
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return err
	}
	var obj interface{ GetName() string }
	var meta *metav1.ObjectMeta
	var store func() // files the decoded object under its kind
	switch tm.APIVersion + "/" + tm.Kind {
	case "apps/v1/Deployment":
		o := new(appsv1.Deployment)
		obj, meta = o, &o.ObjectMeta
		store = func() { m.Deployments[o.Name] = o }
	case "v1/Service":
		o := new(corev1.Service)
		obj, meta = o, &o.ObjectMeta
		store = func() { m.Services[o.Name] = o }
	case "v1/ServiceAccount":
		o := new(corev1.ServiceAccount)
		obj, meta = o, &o.ObjectMeta
		store = func() { m.ServiceAccounts[o.Name] = o }
	case "v1/ConfigMap":
		o := new(corev1.ConfigMap)
		obj, meta = o, &o.ObjectMeta
		store = func() { m.ConfigMaps[o.Name] = o }
	case "policy/v1/PodDisruptionBudget":
		o := new(policyv1.PodDisruptionBudget)
		obj, meta = o, &o.ObjectMeta
		store = func() { m.PDBs[o.Name] = o }
	case "networking.k8s.io/v1/NetworkPolicy":
		o := new(networkingv1.NetworkPolicy)
		obj, meta = o, &o.ObjectMeta
		store = func() { m.NetworkPolicies[o.Name] = o }
	case "autoscaling/v2/HorizontalPodAutoscaler":
		o := new(autoscalingv2.HorizontalPodAutoscaler)
		obj, meta = o, &o.ObjectMeta
		store = func() { m.HPAs[o.Name] = o }
	case "cert-manager.io/v1/Certificate":
		o := new(certificate)
		obj, meta = o, &o.ObjectMeta
		store = func() { m.Certificates[o.Name] = o }
	case "monitoring.coreos.com/v1/ServiceMonitor":
		o := new(serviceMonitor)
		obj, meta = o, &o.ObjectMeta
		store = func() { m.ServiceMonitors[o.Name] = o }
	default:
		return fmt.Errorf("an object of %s %s, which the test does not decode", tm.APIVersion, tm.Kind)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return fmt.Errorf("%s: %w", tm.Kind, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%s: more than one JSON value", tm.Kind)
	}
	key := tm.Kind + "/" + obj.GetName()
	if _, dup := m.Metas[key]; dup {
		return fmt.Errorf("%s rendered twice", key)
	}
	m.Metas[key] = *meta
	store()
	return nil
}

// names are the keys of a map, sorted.
func names[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
