{{- /*
The agency's other objects. Each template's input: dict "root" $ "id" id "agency" values.
*/ -}}

{{- define "throughcare.agency.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "throughcare.agencyName" . }}
  labels:
    {{- include "throughcare.agencyLabels" . | nindent 4 }}
automountServiceAccountToken: false
{{- end -}}

{{- define "throughcare.agency.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "throughcare.agencyName" . }}
  labels:
    {{- include "throughcare.agencyLabels" . | nindent 4 }}
spec:
  type: {{ .root.Values.service.type }}
  selector:
    {{- include "throughcare.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ .root.Values.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ .root.Values.ports.metrics }}
      targetPort: metrics
      protocol: TCP
{{- end -}}

{{- define "throughcare.agency.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "throughcare.agencyName" . }}
  labels:
    {{- include "throughcare.agencyLabels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .root.Values.podDisruptionBudget.maxUnavailable }}
  # A pod that never got ready holds up no drain.
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "throughcare.selectorLabels" . | nindent 6 }}
{{- end -}}

{{- /*
Ingress: gRPC from the configured agency systems only, metrics from monitoring only.
The plaintext health port needs no rule: the kubelet's probes come from the node, which
NetworkPolicy does not restrict. An empty peer list would mean "from anywhere", so a rule
with no peers is left out, closing its port. Egress: NATS and DNS only, plus extraEgress.
*/ -}}
{{- define "throughcare.agency.networkPolicy" -}}
{{- $np := .root.Values.networkPolicy -}}
{{- $grpcFrom := concat ($np.grpcFrom | default list) (.agency.grpcFrom | default list) -}}
{{- if not $np.natsTo }}{{ fail "networkPolicy.natsTo: name the NATS pods; an empty list would open egress to anywhere" }}{{ end -}}
{{- if not $np.dnsTo }}{{ fail "networkPolicy.dnsTo: name the DNS pods; an empty list would open egress to anywhere" }}{{ end -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "throughcare.agencyName" . }}
  labels:
    {{- include "throughcare.agencyLabels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "throughcare.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress, Egress]
  ingress:
    {{- with $grpcFrom }}
    - from:
        {{- toYaml . | nindent 8 }}
      ports:
        - port: {{ $.root.Values.ports.grpc }}
          protocol: TCP
    {{- end }}
    {{- with $np.metricsFrom }}
    - from:
        {{- toYaml . | nindent 8 }}
      ports:
        - port: {{ $.root.Values.ports.metrics }}
          protocol: TCP
    {{- end }}
  egress:
    - to:
        {{- toYaml $np.natsTo | nindent 8 }}
      ports:
        - port: {{ $np.natsPort }}
          protocol: TCP
    - to:
        {{- toYaml $np.dnsTo | nindent 8 }}
      ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
    {{- with $np.extraEgress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- define "throughcare.agency.hpa" -}}
{{- $auto := include "throughcare.agency.autoscaling" . | fromYaml -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "throughcare.agencyName" . }}
  labels:
    {{- include "throughcare.agencyLabels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "throughcare.agencyName" . }}
  minReplicas: {{ $auto.minReplicas }}
  maxReplicas: {{ $auto.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $auto.targetCPUUtilizationPercentage }}
{{- end -}}

{{- /* The names the agency's Service answers to, for its server certificate. */ -}}
{{- define "throughcare.agency.dnsNames" -}}
{{- $svc := include "throughcare.agencyName" . -}}
{{- $ns := .root.Release.Namespace -}}
{{- toYaml (concat (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .root.Values.clusterDomain)) (.root.Values.tls.extraDNSNames | default list)) -}}
{{- end -}}

{{- define "throughcare.agency.certManagerSpec" -}}
{{- $cm := .root.Values.tls.certManager -}}
{{- if not $cm.issuerRef.name }}{{ fail "tls.certManager.issuerRef.name: name the cert-manager issuer" }}{{ end -}}
issuerRef:
  {{- toYaml $cm.issuerRef | nindent 2 }}
duration: {{ $cm.duration }}
renewBefore: {{ $cm.renewBefore }}
privateKey:
  algorithm: ECDSA
  size: 256
  rotationPolicy: Always
{{- end -}}

{{- /* The service's own certificate, for its mutual-TLS gRPC port. */ -}}
{{- define "throughcare.agency.serverCertificate" -}}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ include "throughcare.agencyName" (dict "root" .root "id" .id "suffix" "server") }}
  labels:
    {{- include "throughcare.agencyLabels" . | nindent 4 }}
spec:
  secretName: {{ include "throughcare.tlsSecret" . }}
  {{- include "throughcare.agency.certManagerSpec" . | nindent 2 }}
  usages: [digital signature, server auth]
  dnsNames:
    {{- include "throughcare.agency.dnsNames" . | nindent 4 }}
{{- end -}}

{{- /*
The agency's own system's client certificate: its identity is the URI SAN
spiffe://throughcare/agency/<id> (pkg/certs), which authorizes it at its service alone.
*/ -}}
{{- define "throughcare.agency.clientCertificate" -}}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ include "throughcare.agencyName" (dict "root" .root "id" .id "suffix" "client") }}
  labels:
    {{- include "throughcare.agencyLabels" . | nindent 4 }}
spec:
  secretName: {{ include "throughcare.agencyName" (dict "root" .root "id" .id "suffix" "client-tls") }}
  {{- include "throughcare.agency.certManagerSpec" . | nindent 2 }}
  usages: [digital signature, client auth]
  uris:
    - spiffe://throughcare/agency/{{ .id }}
{{- end -}}

{{- define "throughcare.agency.serviceMonitor" -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "throughcare.agencyName" . }}
  labels:
    {{- include "throughcare.agencyLabels" . | nindent 4 }}
    {{- with .root.Values.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "throughcare.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: metrics
      path: /metrics
      scheme: http
      interval: {{ .root.Values.serviceMonitor.interval }}
{{- end -}}
