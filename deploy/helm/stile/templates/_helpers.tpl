{{/* Names and labels */}}
{{- define "stile.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stile.fullname" -}}
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

{{- define "stile.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stile.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "stile.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "stile.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "stile.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stile.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding session-key, master-key and metrics-token: the user's or the chart's. */}}
{{- define "stile.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "stile.fullname" .) }}
{{- end }}

{{- define "stile.configMapName" -}}
{{- .Values.existingConfigMap | default (include "stile.fullname" .) }}
{{- end }}

{{/* Whether the gateway gets a metrics token (config metrics.token from STILE_METRICS_TOKEN). */}}
{{- define "stile.metricsToken" -}}
{{- if or .Values.secrets.metricsToken .Values.serviceMonitor.enabled }}true{{ end }}
{{- end }}

{{- define "stile.redis" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}true{{ end }}
{{- end }}

{{/* The replica count the chart may run with: more than one needs a shared state store. */}}
{{- define "stile.checkReplicas" -}}
{{- $many := or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- if and $many (not (or .Values.state.url .Values.state.existingSecret)) }}
{{- fail "stile: replicaCount > 1 (or autoscaling.enabled) needs a shared state store: set state.url or state.existingSecret to a Postgres URL (SQLite on each pod's volume would give every replica its own keys, pins and audit trail)" }}
{{- end }}
{{- if and .Values.state.url (hasPrefix "sqlite" .Values.state.url) $many }}
{{- fail "stile: state.url is SQLite but replicaCount > 1 (or autoscaling.enabled): replicas need Postgres" }}
{{- end }}
{{- if .Values.secrets.sessionKey }}
{{- if ne (len (.Values.secrets.sessionKey | b64dec)) 32 }}
{{- fail "stile: secrets.sessionKey must be the base64 of 32 bytes (e.g. `head -c32 /dev/urandom | base64`)" }}
{{- end }}
{{- end }}
{{- if and .Values.secrets.metricsToken (lt (len .Values.secrets.metricsToken) 16) }}
{{- fail "stile: secrets.metricsToken must be at least 16 characters" }}
{{- end }}
{{- end }}

{{/* The Stile config file: .Values.config plus the chart's additions (values.yaml says which). */}}
{{- define "stile.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- if not (hasKey $cfg "state") }}
{{- $_ := set $cfg "state" "${STILE_STATE_URL}" }}
{{- end }}
{{- $audit := dict }}
{{- if hasKey $cfg "audit" }}{{ $audit = get $cfg "audit" }}{{ end }}
{{- if not (hasKey $audit "spool_dir") }}
{{- $_ := set $audit "spool_dir" "/var/lib/stile/audit-spool" }}
{{- end }}
{{- $_ := set $cfg "audit" $audit }}
{{- if include "stile.metricsToken" . }}
{{- $metrics := dict }}
{{- if hasKey $cfg "metrics" }}{{ $metrics = get $cfg "metrics" }}{{ end }}
{{- if not (or (hasKey $metrics "token") (hasKey $metrics "token_hash")) }}
{{- $_ := set $metrics "token" "${STILE_METRICS_TOKEN}" }}
{{- end }}
{{- $_ := set $cfg "metrics" $metrics }}
{{- end }}
{{- if and (include "stile.redis" .) (not (hasKey $cfg "redis")) }}
{{- $_ := set $cfg "redis" "${STILE_REDIS_URL}" }}
{{- end }}
{{- if .Values.apiKeys }}
{{- $auth := dict }}
{{- if hasKey $cfg "auth" }}{{ $auth = get $cfg "auth" }}{{ end }}
{{- $keys := list }}
{{- if hasKey $auth "keys" }}{{ $keys = get $auth "keys" }}{{ end }}
{{- range $i, $key := .Values.apiKeys }}
{{- if not (and $key.name $key.secretName $key.secretKey) }}
{{- fail (printf "stile: apiKeys[%d] needs name, secretName and secretKey (the Secret holds the hash from `stile keys hash`)" $i) }}
{{- end }}
{{- $keys = append $keys (dict "name" $key.name "roles" ($key.roles | default list) "hash" (printf "${STILE_API_KEY_HASH_%d}" $i)) }}
{{- end }}
{{- $_ := set $auth "keys" $keys }}
{{- $_ := set $cfg "auth" $auth }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
