{{/* Chart name, at most 63 characters. */}}
{{- define "smartspec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Resource name prefix: the release name if it contains the chart name, else
<release>-<chart>. Component suffixes (-operator, -gateway) are added to it, so it is cut
to 50 characters.
*/}}
{{- define "smartspec.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "smartspec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "smartspec.labels" -}}
helm.sh/chart: {{ include "smartspec.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: smartspec
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/*
Selector labels of a component: (dict "ctx" $ "component" "gateway").
The gateway's app.kubernetes.io/name is smartspec-gateway whatever the release is called:
the operator's sandbox NetworkPolicy admits egress to pods with exactly that label
(smartspec.builders.jobs.DEFAULT_GATEWAY_POD_LABELS).
*/}}
{{- define "smartspec.selectorLabels" -}}
app.kubernetes.io/name: smartspec-{{ .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "smartspec.componentLabels" -}}
{{ include "smartspec.labels" .ctx }}
{{ include "smartspec.selectorLabels" . }}
{{- end -}}

{{- define "smartspec.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "smartspec.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "smartspec.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "smartspec.operator.leaseName" -}}
{{- default (printf "%s-operator" (include "smartspec.fullname" .)) .Values.operator.leaderElection.leaseName -}}
{{- end -}}

{{- define "smartspec.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (printf "%s-gateway" (include "smartspec.fullname" .)) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- required "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "smartspec.runToken.secretName" -}}
{{- default (printf "%s-run-token-keys" (include "smartspec.fullname" .)) .Values.runToken.existingSecret -}}
{{- end -}}

{{- define "smartspec.provenance.secretName" -}}
{{- default (printf "%s-provenance-keys" (include "smartspec.fullname" .)) .Values.provenance.existingSecret -}}
{{- end -}}

{{- define "smartspec.gatewayUrl" -}}
{{- default (printf "http://%s-gateway.%s.svc:8000/v1" (include "smartspec.fullname" .) .Release.Namespace) .Values.operator.gatewayUrl -}}
{{- end -}}

{{/*
A file of files/deploy/ as a list of documents: (include "smartspec.deployDocs" (dict "ctx" $ "file" "rbac-users.yaml") | fromYamlArray)
*/}}
{{- define "smartspec.deployDocs" -}}
{{- $text := .ctx.Files.Get (printf "files/deploy/%s" .file) -}}
{{- if not $text -}}
{{- fail (printf "files/deploy/%s is missing from the chart" .file) -}}
{{- end -}}
{{- $docs := list -}}
{{- range regexSplit "(?m)^---\\s*$" $text -1 -}}
{{- $doc := fromYaml . -}}
{{- if $doc -}}
{{- $docs = append $docs $doc -}}
{{- end -}}
{{- end -}}
{{- toYaml $docs -}}
{{- end -}}

{{/* A generated object's name with its smartspec- prefix replaced by the release's. */}}
{{- define "smartspec.renamed" -}}
{{- printf "%s-%s" (include "smartspec.fullname" .ctx) (trimPrefix "smartspec-" .name) -}}
{{- end -}}

{{/* A CEL string literal, single-quoted and escaped like smartspec.builders.admission. */}}
{{- define "smartspec.celString" -}}
{{- printf "'%s'" (. | replace "\\" "\\\\" | replace "'" "\\'") -}}
{{- end -}}

{{/* Volumes and mounts shared by both processes. */}}
{{- define "smartspec.tokenKeysVolume" -}}
- name: run-token-keys
  secret:
    secretName: {{ include "smartspec.runToken.secretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.runToken.secretKey }}
        path: keys
{{- end -}}

{{- define "smartspec.s3Env" -}}
- name: SMARTSPEC_S3_BUCKET
  value: {{ .Values.s3.bucket | quote }}
{{- with .Values.s3.endpointUrl }}
- name: SMARTSPEC_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: SMARTSPEC_S3_REGION
  value: {{ .Values.s3.region | quote }}
- name: SMARTSPEC_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end -}}
