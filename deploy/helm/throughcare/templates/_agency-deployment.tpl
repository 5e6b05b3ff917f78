{{- /*
throughcare.agency.deployment: the agency's `throughcare serve`. Every flag is spelled out
in args, each file it names mounted from a Secret or ConfigMap.
Input: dict "root" $ "id" id "agency" values
*/ -}}
{{- define "throughcare.agency.deployment" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $paths := include "throughcare.paths" . | fromYaml -}}
{{- $auto := include "throughcare.agency.autoscaling" . | fromYaml -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "throughcare.agencyName" . }}
  labels:
    {{- include "throughcare.agencyLabels" . | nindent 4 }}
spec:
  {{- if not $auto.enabled }}
  replicas: {{ .agency.replicas | default $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "throughcare.selectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "throughcare.agencyLabels" . | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # Config files are read at start: a change rolls the pods.
        checksum/protocol: {{ $v.protocol.textproto | sha256sum }}
        checksum/keyring: {{ $v.signing.keyring | sha256sum }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "throughcare.agencyName" . }}
      # The service calls no Kubernetes API.
      automountServiceAccountToken: false
      enableServiceLinks: false
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      securityContext:
        # The image's user (pkg/image). fsGroup lets it read the mounted secrets, which
        # stay closed to others (serve refuses a seed or key file others may read).
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        fsGroup: 65532
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: throughcare
          image: {{ include "throughcare.image" $root }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          command: ["/throughcare"]
          args:
            - serve
            - --service={{ .id }}
            - --nats-url={{ $v.nats.url }}
            - --nats-nkey-seed={{ $paths.nats }}/seed
            {{- if $v.nats.tls.caSecret }}
            - --nats-tls-ca={{ $paths.natsCA }}/ca.crt
            {{- end }}
            - --replicas={{ $v.nats.jetstreamReplicas }}
            - --addr=:{{ $v.ports.grpc }}
            - --health-addr=:{{ $v.ports.health }}
            - --metrics-addr=:{{ $v.ports.metrics }}
            - --tls-ca={{ $paths.tls }}/ca.crt
            - --tls-cert={{ $paths.tls }}/tls.crt
            - --tls-key={{ $paths.tls }}/tls.key
            - --signing-key={{ $paths.signing }}/signing.key
            - --keyring={{ $paths.keyring }}/keyring.json
            - --person-hash-key={{ $paths.personHash }}/person-hash.key
            {{- if $v.protocol.textproto }}
            - --protocol={{ $paths.protocol }}/protocol.textproto
            {{- end }}
            - --log-level={{ $v.logLevel }}
          {{- with $v.env }}
          {{- $env := list }}
          {{- range $name, $value := . }}
          {{- if kindIs "map" $value }}
          {{- $env = append $env (merge (dict "name" $name) $value) }}
          {{- else }}
          {{- $env = append $env (dict "name" $name "value" ($value | toString)) }}
          {{- end }}
          {{- end }}
          # A string is the value; a map is the rest of an EnvVar (valueFrom: ...).
          env:
            {{- toYaml $env | nindent 12 }}
          {{- end }}
          ports:
            - name: grpc
              containerPort: {{ $v.ports.grpc }}
              protocol: TCP
            - name: health
              containerPort: {{ $v.ports.health }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $v.ports.metrics }}
              protocol: TCP
          # Native gRPC probes on the plaintext health port: the kubelet has no client
          # certificate for the mutual-TLS port.
          startupProbe:
            grpc:
              port: {{ $v.ports.health }}
            periodSeconds: 2
            failureThreshold: 90
          readinessProbe:
            grpc:
              port: {{ $v.ports.health }}
            periodSeconds: 5
            failureThreshold: 2
          livenessProbe:
            grpc:
              port: {{ $v.ports.health }}
            periodSeconds: 10
            failureThreshold: 3
          securityContext:
            runAsNonRoot: true
            privileged: false
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
            seccompProfile:
              type: RuntimeDefault
          resources:
            {{- toYaml (.agency.resources | default $v.resources) | nindent 12 }}
          volumeMounts:
            - name: tls
              mountPath: {{ $paths.tls }}
              readOnly: true
            - name: nats-nkey
              mountPath: {{ $paths.nats }}
              readOnly: true
            {{- if $v.nats.tls.caSecret }}
            - name: nats-ca
              mountPath: {{ $paths.natsCA }}
              readOnly: true
            {{- end }}
            - name: signing-key
              mountPath: {{ $paths.signing }}
              readOnly: true
            - name: keyring
              mountPath: {{ $paths.keyring }}
              readOnly: true
            - name: person-hash-key
              mountPath: {{ $paths.personHash }}
              readOnly: true
            {{- if $v.protocol.textproto }}
            - name: protocol
              mountPath: {{ $paths.protocol }}
              readOnly: true
            {{- end }}
      volumes:
        # Secrets are 0400 (0440 with fsGroup): serve refuses key files others may read.
        - name: tls
          secret:
            secretName: {{ include "throughcare.tlsSecret" . }}
            defaultMode: 256
            items:
              - {key: ca.crt, path: ca.crt}
              - {key: tls.crt, path: tls.crt}
              - {key: tls.key, path: tls.key}
        - name: nats-nkey
          secret:
            secretName: {{ include "throughcare.natsSecret" . }}
            defaultMode: 256
            items:
              - {key: {{ $v.nats.nkeySeedKey | quote }}, path: seed}
        {{- if $v.nats.tls.caSecret }}
        - name: nats-ca
          secret:
            secretName: {{ $v.nats.tls.caSecret }}
            defaultMode: 292
            items:
              - {key: {{ $v.nats.tls.caKey | quote }}, path: ca.crt}
        {{- end }}
        - name: signing-key
          secret:
            secretName: {{ include "throughcare.signingSecret" . }}
            defaultMode: 256
            items:
              - {key: {{ $v.signing.secretKey | quote }}, path: signing.key}
        - name: keyring
          configMap:
            name: {{ include "throughcare.keyringConfigMap" $root }}
            defaultMode: 292
            items:
              - {key: keyring.json, path: keyring.json}
        - name: person-hash-key
          secret:
            secretName: {{ include "throughcare.personHashSecret" $root }}
            defaultMode: 256
            items:
              - {key: {{ $v.personHashKey.secretKey | quote }}, path: person-hash.key}
        {{- if $v.protocol.textproto }}
        - name: protocol
          configMap:
            name: {{ include "throughcare.protocolConfigMap" $root }}
            defaultMode: 292
            items:
              - {key: protocol.textproto, path: protocol.textproto}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      {{- $selector := dict "labelSelector" (dict "matchLabels" (include "throughcare.selectorLabels" $ | fromYaml)) }}
      {{- $spread := list }}
      {{- range . }}
      {{- $spread = append $spread (merge (deepCopy .) $selector) }}
      {{- end }}
      # Each constraint counts this agency's pods alone.
      topologySpreadConstraints:
        {{- toYaml $spread | nindent 8 }}
      {{- end }}
{{- end -}}

{{- /*
throughcare.agency.autoscaling: autoscaling with the agency's overrides, as YAML. Key by
key, not sprig's merge, which would let a global true override an agency's false.
*/ -}}
{{- define "throughcare.agency.autoscaling" -}}
{{- $g := .root.Values.autoscaling -}}
{{- $a := .agency.autoscaling | default dict -}}
{{- range $k := list "enabled" "minReplicas" "maxReplicas" "targetCPUUtilizationPercentage" }}
{{ $k }}: {{ ternary (get $a $k) (get $g $k) (hasKey $a $k) | toJson }}
{{- end }}
{{- end -}}
