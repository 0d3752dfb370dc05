{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "capture-export.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full resource name: <release>-<chart>, or the release name when it already holds the chart name. */}}
{{- define "capture-export.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "capture-export.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pod: never change them after the first install. */}}
{{- define "capture-export.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capture-export.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "capture-export.labels" -}}
helm.sh/chart: {{ include "capture-export.chart" . }}
{{ include "capture-export.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: capture-export
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "capture-export.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "capture-export.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "capture-export.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The namespaces watched in namespaced mode, as a JSON list (the release namespace by default). */}}
{{- define "capture-export.watchedNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- .Values.watch.namespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{- define "capture-export.storePvcName" -}}
{{- default (printf "%s-store" (include "capture-export.fullname" .)) .Values.store.sqlite.persistence.existingClaim }}
{{- end }}

{{- define "capture-export.storeSecretName" -}}
{{- default (printf "%s-store" (include "capture-export.fullname" .)) .Values.store.postgres.existingSecret }}
{{- end }}

{{/*
The permissions the operator needs on the objects it serves, in the watched namespace(s). Least
privilege, no wildcards:
- S3Exporter and RetentionPolicy: list/watch (kopf's watch streams), get (a RetentionPolicy reads the
  committed cursors of the exporters it is gated on), patch (kopf's progress annotations under
  capture.dev and our finalizer capture.dev/finalizer live in metadata).
- their status subresource: patch (conditions, cursors, last run, totals).
- Secrets: get only (bucket credentials and store DSNs named by secretRef; never list or watch).
- Events: create, in the core API group (kopf's poster, which the operator's own Events go through too,
  writes core/v1 Events; nothing writes events.k8s.io).
The operator creates no objects owned by our resources, so `<kind>/finalizers` (needed only to set
blockOwnerDeletion on owner references) is not granted.
*/}}
{{- define "capture-export.namespacedRules" -}}
- apiGroups: ["capture.dev"]
  resources: ["s3exporters", "retentionpolicies"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["capture.dev"]
  resources: ["s3exporters/status", "retentionpolicies/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets", "configmaps"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{- define "capture-export.ingestTokenSecretName" -}}
{{- default (printf "%s-ingest-token" (include "capture-export.fullname" .)) .Values.ingest.token.existingSecret }}
{{- end }}

{{/* The ingest server runs in a Deployment of its own (PostgreSQL) rather than in the operator pod. */}}
{{- define "capture-export.ingestSeparate" -}}
{{- if and .Values.ingest.enabled .Values.ingest.deployment.enabled }}true{{- end }}
{{- end }}

{{/* Pods of the ingest Deployment: a name of their own, so the operator Deployment never selects them. */}}
{{- define "capture-export.ingestSelectorLabels" -}}
app.kubernetes.io/name: {{ include "capture-export.name" . }}-ingest
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ingest server's limits as command-line flags; `prefix` is "ingest-" inside the operator. */}}
{{- define "capture-export.ingestLimitArgs" -}}
{{- $limits := .root.Values.ingest.limits }}
- --{{ .prefix }}max-body-bytes
- {{ $limits.maxBodyBytes | int64 | quote }}
- --{{ .prefix }}max-decoded-bytes
- {{ $limits.maxDecodedBytes | int64 | quote }}
- --{{ .prefix }}max-records
- {{ $limits.maxRecords | int64 | quote }}
- --{{ .prefix }}max-values
- {{ $limits.maxValues | int64 | quote }}
- --{{ .prefix }}max-pending-records
- {{ $limits.maxPendingRecords | int64 | quote }}
- --{{ .prefix }}max-pending-bytes
- {{ $limits.maxPendingBytes | int64 | quote }}
- --{{ .prefix }}max-inflight-bytes
- {{ $limits.maxInflightBytes | int64 | quote }}
{{- end }}
