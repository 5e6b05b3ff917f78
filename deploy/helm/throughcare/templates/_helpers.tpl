{{/* The chart's name. */}}
{{- define "throughcare.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object: the release, or release-chart when the release does not name the chart. */}}
{{- define "throughcare.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
An agency's object name, <fullname>-<id>[-suffix]. Too long for a Service name fails
rather than truncating, which could give two agencies one name.
Input: dict "root" $ "id" id ["suffix" s]
*/}}
{{- define "throughcare.agencyName" -}}
{{- $name := printf "%s-%s" (include "throughcare.fullname" .root) .id -}}
{{- if .suffix -}}{{- $name = printf "%s-%s" $name .suffix -}}{{- end -}}
{{- if gt (len $name) 63 -}}
{{- fail (printf "object name %q is longer than 63 characters: shorten the release name or set fullnameOverride" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* Kubernetes recommended labels shared by every object. */}}
{{- define "throughcare.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "throughcare.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: throughcare
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels selecting one agency's pods. Input: dict "root" $ "id" id */}}
{{- define "throughcare.selectorLabels" -}}
app.kubernetes.io/name: {{ include "throughcare.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .id }}
{{- end -}}

{{/* An agency's object's labels. Input: dict "root" $ "id" id */}}
{{- define "throughcare.agencyLabels" -}}
{{ include "throughcare.labels" .root }}
app.kubernetes.io/component: {{ .id }}
{{- end -}}

{{/* The image reference: the digest wins over the tag. */}}
{{- define "throughcare.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* An agency's Secret names. Input: dict "root" $ "id" id "agency" values */}}
{{- define "throughcare.tlsSecret" -}}
{{- (.agency.secrets | default dict).tls | default (include "throughcare.agencyName" (dict "root" .root "id" .id "suffix" "tls")) -}}
{{- end -}}
{{- define "throughcare.natsSecret" -}}
{{- (.agency.secrets | default dict).natsNkeySeed | default (include "throughcare.agencyName" (dict "root" .root "id" .id "suffix" "nats-nkey")) -}}
{{- end -}}
{{- define "throughcare.signingSecret" -}}
{{- (.agency.secrets | default dict).signingKey | default (include "throughcare.agencyName" (dict "root" .root "id" .id "suffix" "signing-key")) -}}
{{- end -}}

{{- define "throughcare.personHashSecret" -}}
{{- .Values.personHashKey.secretName | default (printf "%s-person-hash-key" (include "throughcare.fullname" .)) -}}
{{- end -}}
{{- define "throughcare.keyringConfigMap" -}}
{{- .Values.signing.keyringConfigMap | default (printf "%s-keyring" (include "throughcare.fullname" .)) -}}
{{- end -}}
{{- define "throughcare.protocolConfigMap" -}}
{{- printf "%s-protocol" (include "throughcare.fullname" .) -}}
{{- end -}}

{{/* Where the files are mounted in the container. */}}
{{- define "throughcare.paths" -}}
tls: /etc/throughcare/tls
nats: /etc/throughcare/nats
natsCA: /etc/throughcare/nats-ca
signing: /etc/throughcare/signing
keyring: /etc/throughcare/keyring
personHash: /etc/throughcare/person-hash
protocol: /etc/throughcare/protocol
{{- end -}}
