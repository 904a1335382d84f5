{{/*
Chart name, truncated to the 63 characters a label value may hold.
*/}}
{{- define "trike.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the chart name.
Truncated to 52 characters so StatefulSet pod names (<name>-<ordinal>) and the controller
revision label stay within 63.
*/}}
{{- define "trike.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "trike.actuatorName" -}}
{{- printf "%s-actuator" (include "trike.fullname" .) }}
{{- end }}

{{- define "trike.headlessName" -}}
{{- printf "%s-headless" (include "trike.fullname" .) }}
{{- end }}

{{- define "trike.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Kubernetes recommended labels shared by every object.
*/}}
{{- define "trike.labels" -}}
helm.sh/chart: {{ include "trike.chart" . }}
{{ include "trike.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trike
{{- end }}

{{- define "trike.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trike.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Processor: labels and selector. */}}
{{- define "trike.processor.labels" -}}
{{ include "trike.labels" . }}
app.kubernetes.io/component: processor
{{- end }}

{{- define "trike.processor.selectorLabels" -}}
{{ include "trike.selectorLabels" . }}
app.kubernetes.io/component: processor
{{- end }}

{{/* Gateway (fleet mode): labels and selector. */}}
{{- define "trike.gateway.labels" -}}
{{ include "trike.labels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "trike.gateway.selectorLabels" -}}
{{ include "trike.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "trike.gatewayName" -}}
{{- printf "%s-gateway" (include "trike.fullname" .) }}
{{- end }}

{{/* Actuator: labels and selector. */}}
{{- define "trike.actuator.labels" -}}
{{ include "trike.labels" . }}
app.kubernetes.io/component: actuator
{{- end }}

{{- define "trike.actuator.selectorLabels" -}}
{{ include "trike.selectorLabels" . }}
app.kubernetes.io/component: actuator
{{- end }}

{{- define "trike.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trike.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "trike.actuator.serviceAccountName" -}}
{{- if .Values.actuator.serviceAccount.create }}
{{- default (include "trike.actuatorName" .) .Values.actuator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.actuator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "trike.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "trike.actuator.image" -}}
{{- $repo := .Values.actuator.image.repository | default .Values.image.repository }}
{{- $tag := .Values.actuator.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/*
The port of a listen address ("0.0.0.0:4317", "[::]:4317"), as an integer. Fails on loopback
or missing addresses: nothing outside the pod (probes, Services) could reach them.
Usage: include "trike.listenPort" (list "admin" .Values.config.admin)
*/}}
{{- define "trike.listenPort" -}}
{{- $field := index . 0 }}
{{- $addr := index . 1 | default "" | toString }}
{{- if not $addr }}
{{- fail (printf "config.%s must be set to a non-loopback address such as 0.0.0.0:PORT (Trike's default is 127.0.0.1, unreachable from outside the pod)" $field) }}
{{- end }}
{{- if or (hasPrefix "127." $addr) (hasPrefix "[::1]" $addr) (hasPrefix "localhost" $addr) }}
{{- fail (printf "config.%s: %s is a loopback address; listen on 0.0.0.0 in a container" $field $addr) }}
{{- end }}
{{- regexReplaceAll "^.*:" $addr "" | int }}
{{- end }}

{{/*
Environment shared by both workloads: log level, signing key, broker override.
*/}}
{{- define "trike.commonEnv" -}}
- name: TRIKE_LOG
  value: {{ .Values.logLevel | quote }}
{{- if .Values.signing.existingSecret }}
- name: TRIKE_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.signing.existingSecret }}
      key: {{ .Values.signing.secretKey }}
{{- end }}
{{- if .Values.kafkaBrokers }}
- name: TRIKE_KAFKA_BROKERS
  value: {{ .Values.kafkaBrokers | quote }}
{{- end }}
{{- end }}
