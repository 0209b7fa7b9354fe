{{/* Common labels. */}}
{{- define "rds-csi.labels" -}}
app.kubernetes.io/name: rds-csi
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* An image reference from {repository, tag}. */}}
{{- define "rds-csi.image" -}}
{{ .repository }}:{{ .tag }}
{{- end -}}

{{/* The plugin directory on the host; the node's socket lives in it. */}}
{{- define "rds-csi.pluginDir" -}}
{{ .Values.kubeletDir }}/plugins/{{ .Values.driverName }}
{{- end -}}
