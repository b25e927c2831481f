{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "tkt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, suffixed with the chart name unless it contains it. */}}
{{- define "tkt.fullname" -}}
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

{{- define "tkt.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tkt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tkt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tkt.labels" -}}
helm.sh/chart: {{ include "tkt.chart" . }}
{{ include "tkt.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: transferkit
{{- end }}

{{- define "tkt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tkt.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[@digest] or repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "tkt.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Models loaded at startup, comma-separated: `models` plus `model.name` (what the gitops deploy wrote). */}}
{{- define "tkt.loadModels" -}}
{{- $models := .Values.models }}
{{- if and .Values.model.name (not (has .Values.model.name $models)) }}
{{- $models = append $models .Values.model.name }}
{{- end }}
{{- join "," $models }}
{{- end }}

{{/*
Readiness: the served model's own ready endpoint. Triton keeps a version that failed to load in its index as
UNAVAILABLE, and with --strict-readiness /v2/health/ready then stays 400 after a rollback although the previous
version serves; /v2/models/<name>/ready answers for the model's ready version.
*/}}
{{- define "tkt.readinessPath" -}}
{{- if or .Values.test.model (compact (splitList "," (include "tkt.loadModels" .))) -}}
/v2/models/{{ include "tkt.testModel" . }}/ready
{{- else -}}
/v2/health/ready
{{- end }}
{{- end }}

{{/* The model helm test calls: test.model, else model.name, else the first loaded model. */}}
{{- define "tkt.testModel" -}}
{{- .Values.test.model | default .Values.model.name | default (first (compact (splitList "," (include "tkt.loadModels" .)))) }}
{{- end }}

{{/* Where Triton reads the repository from. */}}
{{- define "tkt.repositoryUri" -}}
{{- if eq .Values.modelRepository.type "s3" }}
{{- required "modelRepository.s3.uri is required when modelRepository.type is s3" .Values.modelRepository.s3.uri }}
{{- else }}
{{- "/models" }}
{{- end }}
{{- end }}

{{/* Non-empty (the string "true") when the pods request GPUs. */}}
{{- define "tkt.gpu" -}}
{{- if gt (int .Values.gpu.count) 0 }}true{{ end }}
{{- end }}

{{/* Labels of the `helm test` Pod: deliberately outside the Service's and Deployment's selectors. */}}
{{- define "tkt.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "tkt.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{/* Selector of the monitor's pods: distinct from Triton's, so the inference Service never routes to them. */}}
{{- define "tkt.monitorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "tkt.name" . }}-monitor
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
