{{/* The driver the values choose: exactly one of socketLB / iptables. */}}
{{- define "lbcore.driver" -}}
{{- if and .Values.socketLB.enabled .Values.iptables.enabled -}}
{{- fail "enable one datapath: socketLB.enabled or iptables.enabled, not both" -}}
{{- else if .Values.socketLB.enabled -}}
socklb
{{- else if .Values.iptables.enabled -}}
iptables
{{- else -}}
{{- fail "no datapath enabled: set socketLB.enabled=true or iptables.enabled=true" -}}
{{- end -}}
{{- end -}}

{{- define "lbcore.labels" -}}
app.kubernetes.io/name: lbcore
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "lbcore.selectorLabels" -}}
app.kubernetes.io/name: lbcore
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
