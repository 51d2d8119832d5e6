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
{{- include "lift-reward.podResources" (dict "root" . "resources" .Values.resources "gpuCount" .Values.gpu.count) }}
{{- end }}

{{/* The same for one workload: (dict "root" $ "resources" RESOURCES "gpuCount" N) (a critic's own, separate mode). */}}
{{- define "lift-reward.podResources" -}}
{{- if .root.Values.demo.enabled }}
{{- toYaml .root.Values.demo.resources }}
{{- else }}
{{- $res := deepCopy (.resources | default dict) }}
{{- $limits := deepCopy (get $res "limits" | default dict) }}
{{- $_ := set $limits .root.Values.gpu.resourceName (int .gpuCount) }}
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

{{/*
The PromQL query KEDA scales on: queued requests summed over one Service's pods (this release's, or in separate
mode one critic's). Takes (dict "root" $ "service" SERVICE-NAME).
*/}}
{{- define "lift-reward.kedaQuery" -}}
{{- if .root.Values.autoscaling.keda.query }}
{{- .root.Values.autoscaling.keda.query }}
{{- else }}
{{- printf "sum(lift_queued_requests{namespace=\"%s\", service=\"%s\"})" .root.Release.Namespace .service }}
{{- end }}
{{- end }}

{{/*
Several critics (`critics`, `criticsMode`). "separate" is true when every critic gets its own Deployment and
Service; with `critics` empty, or in "together" mode, there is one Deployment and one Service as always.
*/}}
{{- define "lift-reward.separate" -}}
{{- if and .Values.critics (eq .Values.criticsMode "separate") }}true{{ end }}
{{- end }}

{{/* A critic's object name: "<fullname>-<critic>". Takes (dict "root" $ "name" NAME). */}}
{{- define "lift-reward.criticFullname" -}}
{{- printf "%s-%s" (include "lift-reward.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The label that tells one critic's pods from another's (separate mode only). */}}
{{- define "lift-reward.criticLabel" -}}
lift-reward/critic: {{ . }}
{{- end }}

{{/*
The scoring workloads as a YAML list, one entry per Deployment: {name, critic} where name is the object name of
its Deployment, Service, PDB and autoscaler, and critic is empty unless each critic runs on its own.
*/}}
{{- define "lift-reward.workloads" -}}
{{- if include "lift-reward.separate" . }}
{{- range .Values.critics }}
- name: {{ include "lift-reward.criticFullname" (dict "root" $ "name" .name) }}
  critic: {{ .name }}
{{- end }}
{{- else }}
- name: {{ include "lift-reward.fullname" . }}
  critic: ""
{{- end }}
{{- end }}

{{/* A critic's mount point (default /models/<name>) and folder (default: the mount point itself). */}}
{{- define "lift-reward.criticMountPath" -}}
{{- (.model | default dict).mountPath | default (printf "/models/%s" .name) }}
{{- end }}

{{- define "lift-reward.criticPath" -}}
{{- (.model | default dict).path | default (include "lift-reward.criticMountPath" .) }}
{{- end }}

{{/* Checks on `critics` that a schema cannot express; fails with a message naming the value to change. */}}
{{- define "lift-reward.checkCritics" -}}
{{- if .Values.critics }}
{{- if .Values.demo.enabled }}
{{- fail "demo.enabled serves the tiny demo critic: leave critics empty in demo mode" }}
{{- end }}
{{- $seen := dict }}
{{- range $i, $c := .Values.critics }}
{{- if hasKey $seen $c.name }}
{{- fail (printf "critics: %q is listed twice (each critic once; its name is its /v1/models id)" $c.name) }}
{{- end }}
{{- $_ := set $seen $c.name true }}
{{- $mount := trimSuffix "/" (include "lift-reward.criticMountPath" $c) }}
{{- $path := include "lift-reward.criticPath" $c }}
{{- if not (or (eq (trimSuffix "/" $path) $mount) (hasPrefix (printf "%s/" $mount) $path)) }}
{{- fail (printf "critics[%d] (%s): model.path (%s) must be model.mountPath (%s) or lie under it" $i $c.name $path $mount) }}
{{- end }}
{{- if not (or ($c.model | default dict).existingClaim ($c.model | default dict).volume) }}
{{- fail (printf "critics[%d] (%s): model.existingClaim or model.volume must say where its weights are" $i $c.name) }}
{{- end }}
{{- if eq $.Values.criticsMode "together" }}
{{- range $key := list "replicas" "resources" "gpu" "env" }}
{{- if hasKey $c $key }}
{{- fail (printf "critics[%d].%s is per critic in criticsMode separate; together, the one pod takes the chart's own (replicaCount, resources, gpu, env)" $i $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (include "lift-reward.separate" .) .Values.autoscaling.enabled (eq .Values.autoscaling.mode "keda") .Values.autoscaling.keda.query }}
{{- fail "autoscaling.keda.query is one query; with criticsMode separate leave it empty: each critic's ScaledObject queries its own Service" }}
{{- end }}
{{- end }}
{{- end }}
