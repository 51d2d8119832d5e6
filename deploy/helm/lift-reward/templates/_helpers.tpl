{{/* Names and labels, the conventional helpers. */}}
{{- define "lift-reward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lift-reward.fullname" -}}
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

{{- define "lift-reward.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lift-reward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lift-reward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lift-reward.labels" -}}
helm.sh/chart: {{ include "lift-reward.chart" . }}
{{ include "lift-reward.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: scoring
{{- end }}

{{- define "lift-reward.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lift-reward.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image: an explicit tag, else the chart's appVersion with the variant the mode needs. */}}
{{- define "lift-reward.image" -}}
{{- $variant := ternary "cpu" "gpu" .Values.demo.enabled }}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion $variant) .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/*
Resources: the values' resources (demo.resources in demo mode) plus the GPU limit. Extended resources
such as nvidia.com/gpu go in limits; Kubernetes copies them to requests.
*/}}
{{- define "lift-reward.resources" -}}
{{- if .Values.demo.enabled }}
{{- toYaml .Values.demo.resources }}
{{- else }}
{{- $res := deepCopy (.Values.resources | default dict) }}
{{- $limits := deepCopy (get $res "limits" | default dict) }}
{{- $_ := set $limits .Values.gpu.resourceName (int .Values.gpu.count) }}
{{- $_ := set $res "limits" $limits }}
{{- toYaml $res }}
{{- end }}
{{- end }}

{{/* One HTTP probe from a probes.<kind> entry; the port is the container's named port. */}}
{{- define "lift-reward.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: http
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end }}

{{/* The three probes, shared so every container spec gets the same patient startup. */}}
{{- define "lift-reward.probes" -}}
startupProbe:
  {{- include "lift-reward.httpProbe" .Values.probes.startup | nindent 2 }}
livenessProbe:
  {{- include "lift-reward.httpProbe" .Values.probes.liveness | nindent 2 }}
readinessProbe:
  {{- include "lift-reward.httpProbe" .Values.probes.readiness | nindent 2 }}
{{- end }}

{{/* The PromQL query KEDA scales on: queued requests summed over this release's pods. */}}
{{- define "lift-reward.kedaQuery" -}}
{{- if .Values.autoscaling.keda.query }}
{{- .Values.autoscaling.keda.query }}
{{- else }}
{{- printf "sum(lift_queued_requests{namespace=\"%s\", service=\"%s\"})" .Release.Namespace (include "lift-reward.fullname" .) }}
{{- end }}
{{- end }}
