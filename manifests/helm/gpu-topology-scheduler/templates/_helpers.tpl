{{/* Labels of one component: the same as in manifests/ (no release labels, so the
default render equals the kustomization). */}}
{{- define "gputopo.labels" -}}
app.kubernetes.io/name: {{ . }}
app.kubernetes.io/part-of: gpu-topology-scheduler
{{- end -}}

{{- define "gputopo.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "gputopo.extenderHost" -}}
gputopo-extender.{{ .Release.Namespace }}.svc
{{- end -}}

{{- define "gputopo.extenderURL" -}}
{{ if .Values.tls.enabled }}https{{ else }}http{{ end }}://{{ include "gputopo.extenderHost" . }}:{{ .Values.extender.port }}
{{- end -}}

{{/* The extenders entry of a KubeSchedulerConfiguration: the second scheduler's
ConfigMap and, for scheduler.mode=main, the snippet NOTES.txt prints. */}}
{{- define "gputopo.extenderEntry" -}}
- urlPrefix: {{ include "gputopo.extenderURL" . | quote }}
  filterVerb: filter
{{- if not .Values.extender.filterTopScored }}
  prioritizeVerb: prioritize
{{- end }}
  preemptVerb: preempt
  bindVerb: bind
  weight: {{ .Values.scheduler.extenderWeight }}
  nodeCacheCapable: true
  managedResources:
    - name: {{ .Values.resourceName }}
      ignoredByScheduler: false
  httpTimeout: {{ .Values.scheduler.httpTimeout }}
  ignorable: false
{{- if .Values.tls.enabled }}
  enableHTTPS: true
  tlsConfig:
    caFile: /etc/gputopo-scheduler-tls/ca.crt
    serverName: {{ include "gputopo.extenderHost" . }}
{{- end }}
{{- end -}}

{{- define "gputopo.resourceNameArgs" -}}
{{- if ne .Values.resourceName "nvidia.com/gpu" }}
- --resource-name={{ .Values.resourceName }}
{{- end }}
{{- end -}}
