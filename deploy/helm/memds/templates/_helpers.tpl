{{/* The objects' base name: the release name, with the chart's name unless it holds it. */}}
{{- define "memds.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 57 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 57 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The headless Service the servers find each other by. */}}
{{- define "memds.peersName" -}}
{{- printf "%s-peers" (include "memds.fullname" .) -}}
{{- end -}}

{{- define "memds.tlsSecret" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls" (include "memds.fullname" .)) -}}
{{- end -}}

{{- define "memds.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The servers' pods. */}}
{{- define "memds.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{/* A memds.toml value: strings quoted, whole numbers without an exponent. */}}
{{- define "memds.tomlValue" -}}
{{- if kindIs "string" . -}}
{{- . | quote -}}
{{- else if and (kindIs "float64" .) (eq (. | float64) (. | int64 | float64)) -}}
{{- . | int64 -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}
