{{/*
Chart name, truncated to 63 characters (DNS label limit).
*/}}
{{- define "bizosaas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified release prefix. When the release name already contains the chart name it is
used as is. Kept short enough to leave room for the "-operator" and "-plans" suffixes.
*/}}
{{- define "bizosaas.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the operator's namespaced objects (Deployment, Service, ConfigMap prefix, Role, ...).
*/}}
{{- define "bizosaas.operatorName" -}}
{{- printf "%s-operator" (include "bizosaas.fullname" .) }}
{{- end }}

{{/*
Chart label value.
*/}}
{{- define "bizosaas.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "bizosaas.labels" -}}
helm.sh/chart: {{ include "bizosaas.chart" . }}
{{ include "bizosaas.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bizosaas
{{- end }}

{{/*
Selector labels of the operator pods.
*/}}
{{- define "bizosaas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bizosaas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels of the tenant ClusterRoles (not tied to the operator component).
*/}}
{{- define "bizosaas.tenantRoleLabels" -}}
helm.sh/chart: {{ include "bizosaas.chart" . }}
app.kubernetes.io/name: {{ include "bizosaas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bizosaas
app.kubernetes.io/component: tenant-rbac
{{- end }}

{{/*
ServiceAccount of the operator.
*/}}
{{- define "bizosaas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bizosaas.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest} and the default tag: `repository@digest`
when a digest is set, else `repository:tag`.
Usage: include "bizosaas.imageRef" (list .Values.image .Chart.AppVersion)
*/}}
{{- define "bizosaas.imageRef" -}}
{{- $image := index . 0 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default (index . 1) $image.tag) }}
{{- end }}
{{- end }}

{{/*
Operator and agent images.
*/}}
{{- define "bizosaas.image" -}}
{{- include "bizosaas.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{- define "bizosaas.agentImage" -}}
{{- include "bizosaas.imageRef" (list .Values.agent.image .Chart.AppVersion) }}
{{- end }}

{{/*
Whether leader election is on: requested, or forced by more than one replica.
Renders "true" or "false".
*/}}
{{- define "bizosaas.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ else }}false{{ end }}
{{- end }}

{{/*
Validate values that the templates cannot express with `required` alone. Renders nothing.
*/}}
{{- define "bizosaas.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "leaderElection.enabled=false is not allowed with replicaCount > 1: replicas would reconcile concurrently" }}
{{- end }}
{{- if not (has .Values.logFormat (list "json" "text")) }}
{{- fail (printf "logFormat must be \"json\" or \"text\", got %q" (toString .Values.logFormat)) }}
{{- end }}
{{- if .Values.vault.enabled }}
{{- if not .Values.vault.address }}
{{- fail "vault.address is required when vault.enabled=true (e.g. https://vault.vault.svc:8200)" }}
{{- end }}
{{- if eq .Values.vault.auth "token" }}
{{- if not .Values.vault.tokenSecret.name }}
{{- fail "vault.tokenSecret.name is required when vault.auth=token: name an existing Secret holding the Vault token" }}
{{- end }}
{{- else if eq .Values.vault.auth "kubernetes" }}
{{- if not .Values.vault.role }}
{{- fail "vault.role is required when vault.auth=kubernetes: the Kubernetes-auth role of the operator" }}
{{- end }}
{{- else }}
{{- fail (printf "vault.auth must be \"token\" or \"kubernetes\", got %q" (toString .Values.vault.auth)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the gateway's objects (Deployment, Service, ServiceAccount, ClusterRole, ...).
*/}}
{{- define "bizosaas.gatewayName" -}}
{{- printf "%s-gateway" (include "bizosaas.fullname" .) }}
{{- end }}

{{- define "bizosaas.gatewayImage" -}}
{{- include "bizosaas.imageRef" (list .Values.gateway.image .Chart.AppVersion) }}
{{- end }}

{{/*
Selector labels of the gateway pods.
*/}}
{{- define "bizosaas.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "bizosaas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "bizosaas.gatewayLabels" -}}
helm.sh/chart: {{ include "bizosaas.chart" . }}
{{ include "bizosaas.gatewaySelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bizosaas
{{- end }}
