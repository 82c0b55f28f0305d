{{/*
The chart name, or nameOverride.
*/}}
{{- define "z2m.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name, prefix of every object's name: fullnameOverride, else the
release name (plus the chart name unless the release name contains it).
Truncated to 63 characters, the longest DNS label.
*/}}
{{- define "z2m.fullname" -}}
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

{{/*
Name of the ClusterRole (and its RoleBindings) that lets the operator read and
patch the Secrets it generated, per application namespace.
*/}}
{{- define "z2m.credentialsName" -}}
{{- printf "%s-credentials" (include "z2m.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "z2m.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "z2m.labels" -}}
helm.sh/chart: {{ include "z2m.chart" . }}
{{ include "z2m.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: z2m
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels that select the operator's pods; immutable once installed.
*/}}
{{- define "z2m.selectorLabels" -}}
app.kubernetes.io/name: {{ include "z2m.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "z2m.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "z2m.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository plus digest, else plus tag (default appVersion).
*/}}
{{- define "z2m.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The operator's rules on namespaced objects, shared by the cluster-wide
ClusterRole and the namespaced mode's Roles. Call with
(dict "secretVerbs" "[create]"): cluster-wide it may only create Secrets.
*/}}
{{- define "z2m.namespacedRules" -}}
- apiGroups: [z2m.dev]
  resources: [scalingstages]
  verbs: [get, list, watch, patch, update]
- apiGroups: [z2m.dev]
  resources: [scalingstages/status]
  verbs: [get, patch, update]
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [secrets]
  verbs: {{ .secretVerbs }}
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, update, delete]
# PostgreSQL's Patroni and stage 5's Prometheus run under a ServiceAccount and Role the
# operator makes per ScalingStage; granting a Role needs the operator to hold its rules
# (pods below).
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, update, delete]
# Patroni's members (who leads) before the failover standby goes; pods no node can take,
# to say so in the status; and its Role's rules,
# and Prometheus' (list and watch, for its pod discovery).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, update, patch]
# Stage 5 where the Prometheus Operator's kinds are served: a PodMonitor and a PrometheusRule.
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors, prometheusrules]
  verbs: [get, list, watch, create, patch, update, delete]
# Stage 6 where the Gateway API is served: a Gateway and an HTTPRoute.
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways, httproutes]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/*
Whether the install is namespaced (scope: namespaced); fails without watchNamespaces.
*/}}
{{- define "z2m.namespaced" -}}
{{- if eq .Values.scope "namespaced" }}
{{- if not .Values.watchNamespaces }}
{{- fail "scope: namespaced needs watchNamespaces: the namespaces that get a Role" }}
{{- end }}
{{- "true" }}
{{- end }}
{{- end }}
